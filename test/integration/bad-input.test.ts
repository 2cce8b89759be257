import type dgram from "node:dgram"
import net from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { encodeFrame, type Frame, type StatsSnapshot } from "cluster-comm"
import { eventually, member, rawMulticast, testCluster } from "../helpers.ts"

const where = testCluster(3)
const timing = { heartbeat: "100 millis", ttl: "2 seconds" } as const

const sender = { hostId: "0000000000bb", instance: "00000000000000bb", name: "mallory" }
const valid: Frame = {
  _tag: "Message",
  sender,
  op: "C",
  channel: 0,
  targets: [],
  data: new TextEncoder().encode("hi")
}

const sendDatagram = (s: dgram.Socket, bytes: Uint8Array) =>
  Effect.callback<void>((resume) => {
    s.send(bytes, where.port, where.address, () => resume(Effect.void))
  })

/** Opens a tcp connection, writes `chunks` (with a pause between), and waits for the far end to close or a short time. */
const rawTcp = (port: number, chunks: ReadonlyArray<Uint8Array>) =>
  Effect.callback<"closed" | "open">((resume) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    socket.on("error", () => {})
    let i = 0
    const next = () => {
      if (i < chunks.length) {
        socket.write(chunks[i++]!)
        setTimeout(next, 2)
      } else setTimeout(() => {
        resume(Effect.succeed(socket.destroyed ? "closed" : "open"))
        socket.destroy()
      }, 50)
    }
    socket.on("connect", next)
    socket.on("close", () => {
      if (i >= chunks.length) return
      i = chunks.length
    })
  })

const prefixed = (bytes: Uint8Array) => {
  const out = Buffer.alloc(4 + bytes.length)
  out.writeUInt32BE(bytes.length, 0)
  out.set(bytes, 4)
  return out
}

describe("bad input from the network", () => {
  it.live("datagrams that are not frames are dropped and counted by reason; the member keeps serving", () =>
    Effect.gen(function*() {
      const victim = yield* member({ name: "victim", ...where, ...timing })
      const raw = yield* rawMulticast
      const good = encodeFrame(valid)
      const cases: Array<[Uint8Array, string]> = [
        [Buffer.from("hello, not a frame"), "bad-magic"],
        [good.subarray(0, 3), "truncated"],
        [good.subarray(0, 12), "truncated"],
        [Buffer.from([0xcc, 9, 5, 0, ...good.subarray(4)]), "unknown-version"],
        [Buffer.from([0xcc, 1, 77, 0, ...good.subarray(4)]), "unknown-kind"],
        [Buffer.concat([encodeFrame({ _tag: "Leave", sender }), Buffer.from([1, 2, 3])]), "trailing-bytes"]
      ]
      for (const [bytes] of cases) yield* sendDatagram(raw, bytes)
      // 2,000 random datagrams (bounded), a few shaped like frames.
      for (let i = 0; i < 2000; i++) {
        const junk = Buffer.alloc(1 + Math.floor(Math.random() * 200))
        for (let j = 0; j < junk.length; j++) junk[j] = Math.floor(Math.random() * 256)
        if (i % 2 === 0) {
          junk[0] = 0xcc
          if (junk.length > 1) junk[1] = 1
        }
        yield* sendDatagram(raw, junk)
        // Paced, so the kernel's socket buffer (not our code) never drops them.
        if (i % 50 === 49) yield* Effect.sleep("2 millis")
      }
      const expected = new Map<string, number>()
      for (const [, reason] of cases) expected.set(reason, (expected.get(reason) ?? 0) + 1)
      const decodeDrops = (s: StatsSnapshot) =>
        ["truncated", "bad-magic", "unknown-version", "unknown-kind", "invalid-field", "trailing-bytes"]
          .reduce((sum, r) => sum + (s.drops[r as keyof typeof s.drops] ?? 0), 0)
      // Under a loaded machine the kernel may still drop a few datagrams before we see them.
      const stats = yield* eventually(victim.stats, (s) => decodeDrops(s) >= 1900, "10 seconds")
      for (const [reason, n] of expected) {
        assert.isAtLeast(stats.drops[reason as keyof typeof stats.drops] ?? 0, n, reason)
      }

      // Still serving: a new member is discovered and its message delivered.
      const got = yield* victim.messages.pipe(Stream.take(1), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("20 millis")
      const friend = yield* member({ name: "friend", ...where, ...timing })
      const [v] = yield* eventually(friend.resolve("victim"), (s) => s.length === 1)
      yield* friend.sendTo(v!, "C", "still there?")
      const [m] = yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
      assert.strictEqual(m?.text, "still there?")
    }))

  it.live("tcp streams with garbage, oversize prefixes or truncated frames are dropped; the member keeps serving", () =>
    Effect.gen(function*() {
      const victim = yield* member({ name: "tcp-victim", ...where, ...timing, maxFrame: 64 * 1024 })
      const self = yield* victim.self
      const port = self.protocols.find((p) => p.protocol === "tcp")!.port
      const good = encodeFrame(valid)

      // An oversize length prefix: the connection is cut, not buffered.
      const oversize = Buffer.alloc(8)
      oversize.writeUInt32BE(1 << 30, 0)
      assert.strictEqual(yield* rawTcp(port, [oversize]), "closed")
      // Frames that decode to nothing, each counted; the connection survives them.
      yield* rawTcp(port, [
        prefixed(Buffer.from("garbage")),
        prefixed(Buffer.from([0xcc, 3, 1, 0])),
        prefixed(good.subarray(0, 10))
      ])
      // A valid frame dripped one byte at a time still arrives whole.
      const got = yield* victim.messages.pipe(Stream.take(1), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("20 millis")
      const whole = prefixed(good)
      yield* rawTcp(port, Array.from(whole, (b) => Buffer.from([b])))
      const [m] = yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
      assert.strictEqual(m?.text, "hi")
      assert.strictEqual(m?.from.name, "mallory")
      // A stream that ends mid-frame is simply closed.
      yield* rawTcp(port, [whole.subarray(0, 9)])

      const stats = yield* eventually(victim.stats, (s) => (s.drops.oversize ?? 0) >= 1)
      assert.strictEqual(stats.drops.oversize, 1)
      assert.strictEqual(stats.drops["bad-magic"], 1)
      assert.strictEqual(stats.drops["unknown-version"], 1)
      assert.strictEqual(stats.drops.truncated, 1)

      // Still serving over tcp.
      const again = yield* victim.messages.pipe(Stream.take(1), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("20 millis")
      const friend = yield* member({ name: "tcp-friend", ...where, ...timing })
      const [v] = yield* eventually(friend.resolve("tcp-victim"), (s) => s.length === 1)
      const [d] = yield* friend.sendTo(v!, "C", "after the storm")
      assert.strictEqual(d?.protocol, "tcp")
      assert.strictEqual((yield* Fiber.join(again).pipe(Effect.timeout("3 seconds")))[0]?.text, "after the storm")
    }))
  it.live("frames cut anywhere across tcp reads arrive whole and in order", () =>
    Effect.gen(function*() {
      const victim = yield* member({ name: "tcp-reader", ...where, ...timing })
      const self = yield* victim.self
      const port = self.protocols.find((p) => p.protocol === "tcp")!.port
      // Sizes around a read's edges: empty, tiny, and one larger than a socket read.
      const sizes = [0, 1, 3, 200, 5, 100_000, 2, 40, 0, 9]
      const frames = sizes.map((size, i) => prefixed(encodeFrame({ ...valid, data: new Uint8Array(size).fill(i) })))
      const stream = Buffer.concat(frames)
      // Where each frame starts; writes that begin on a frame and hold whole
      // frames then part of the next (inside its prefix, inside its body).
      const at = frames.map((_, i) => frames.slice(0, i).reduce((n, f) => n + f.length, 0))
      const cuts = [at[2]! + 1, at[3]!, at[5]! + 10, at[5]! + 70_000, at[6]!, at[9]! + 2]
      const chunks = [0, ...cuts].map((from, i) => stream.subarray(from, cuts[i] ?? stream.length))
      const got = yield* victim.messages.pipe(Stream.take(sizes.length), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("20 millis")
      yield* rawTcp(port, chunks)
      const messages = yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
      assert.deepStrictEqual(messages.map((m) => m.data.length), sizes)
      assert.deepStrictEqual(messages.map((m, i) => m.data.every((b) => b === i)), sizes.map(() => true))
    }))
})
