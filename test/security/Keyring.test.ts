import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { encodeFrame, type Frame, Keyring } from "cluster-comm"

const frame: Frame = {
  _tag: "Message",
  sender: { hostId: "0000000000aa", instance: "00000000000000aa", name: "alice" },
  op: "C",
  channel: 0,
  targets: [],
  data: new TextEncoder().encode("secret plan")
}

const ring = (keys: ReadonlyArray<{ id: number; secret: string }>, primary?: number, maxSkewMillis?: number) =>
  Layer.build(Keyring.layer({ keys, primary, ...(maxSkewMillis === undefined ? {} : { maxSkewMillis }) })).pipe(
    Effect.map((ctx) => Context.get(ctx, Keyring))
  )

describe("keyring", () => {
  it.effect("seals so that only holders of the key can open, and nothing is readable on the wire", () =>
    Effect.gen(function*() {
      const alice = yield* ring([{ id: 1, secret: "correct horse" }])
      const bob = yield* ring([{ id: 1, secret: "correct horse" }])
      const eve = yield* ring([{ id: 1, secret: "battery staple" }])
      const nobody = yield* ring([])
      const sealed = alice.seal(encodeFrame(frame), 0)
      assert.notInclude(sealed.toString("latin1"), "secret plan")
      assert.notInclude(sealed.toString("latin1"), "alice")
      const opened = bob.open(sealed)
      assert.isTrue(typeof opened === "object")
      if (typeof opened === "object") assert.deepStrictEqual(Buffer.from(opened.frame), encodeFrame(frame))
      assert.strictEqual(eve.open(sealed), "forged") // same key id, other key
      assert.strictEqual(nobody.open(sealed), "unknown-key")
      assert.strictEqual(bob.open(encodeFrame(frame)), "unsealed")
      const tampered = Buffer.from(sealed)
      tampered[40] = tampered[40]! ^ 1
      assert.strictEqual(bob.open(tampered), "forged")
      const otherId = yield* ring([{ id: 2, secret: "correct horse" }])
      assert.strictEqual(otherId.open(sealed), "unknown-key")
      // A key id is covered by the tag: relabelling a frame does not help.
      const relabelled = Buffer.from(sealed)
      relabelled[2] = 2
      assert.strictEqual(otherId.open(relabelled), "forged")
    }))

  it.effect("refuses replays: a sequence number seen before, or older than the window", () =>
    Effect.gen(function*() {
      const alice = yield* ring([{ id: 0, secret: "s" }])
      const bob = yield* ring([{ id: 0, secret: "s" }])
      const sealed = Array.from({ length: 5000 }, () => alice.seal(encodeFrame(frame), 0))
      const accept = (b: Buffer) => {
        const o = bob.open(b)
        return typeof o === "object" && bob.fresh(frame.sender.instance, o.counter)
      }
      assert.isTrue(accept(sealed[10]!))
      assert.isTrue(accept(sealed[4]!)) // out of order, within the window
      assert.isFalse(accept(sealed[10]!)) // replayed
      assert.isTrue(accept(sealed[4999]!))
      assert.isFalse(accept(sealed[11]!)) // now older than the 4,096-frame window
      assert.isTrue(accept(sealed[4000]!))
      assert.isFalse(accept(sealed[4000]!))
      // Another sender's numbers are its own.
      const o = bob.open(sealed[12]!)
      assert.isTrue(typeof o === "object" && bob.fresh("00000000000000bb", o.counter))
    }))

  it.effect("refuses a frame whose clock is too far from ours", () =>
    Effect.gen(function*() {
      const alice = yield* ring([{ id: 0, secret: "s" }])
      const strict = yield* ring([{ id: 0, secret: "s" }], 0, 1000)
      const sealed = alice.seal(encodeFrame(frame), 0)
      const skewed = Buffer.from(sealed)
      skewed.writeUInt32BE(sealed.readUInt32BE(11) - 3600, 11) // an hour old
      assert.strictEqual(strict.open(skewed), "stale")
      assert.isTrue(typeof strict.open(sealed) === "object")
    }))

  it.effect("rotates keys: install, use, remove; the primary cannot be removed", () =>
    Effect.gen(function*() {
      const k = yield* ring([{ id: 1, secret: "old" }])
      yield* k.install({ id: 2, secret: "new" })
      assert.deepStrictEqual(yield* k.list, { ids: [1, 2], primary: 1 })
      assert.strictEqual((yield* Effect.flip(k.remove(1)))._tag, "KeyringError")
      yield* k.use(2)
      yield* k.remove(1)
      assert.deepStrictEqual(yield* k.list, { ids: [2], primary: 2 })
      assert.strictEqual((yield* Effect.flip(k.use(9)))._tag, "KeyringError")
      assert.strictEqual((yield* Effect.flip(k.install({ id: 300, secret: "x" })))._tag, "KeyringError")
    }))
})
