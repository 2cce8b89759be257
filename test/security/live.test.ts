import dgram from "node:dgram"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, } from "effect"
import { MemoryNetwork } from "cluster-comm"
import { TestClock } from "effect/testing"
import { collect, eventually, member, memberOn, testCluster } from "../helpers.ts"

const where = { ...testCluster(10), heartbeat: "200 millis", ttl: "2 seconds" } as const

describe("sealed clusters on real sockets", () => {
  it.live("key holders talk; members without the key, or with a wrong one, can neither read nor inject", () =>
    Effect.gen(function*() {
      const a = yield* member({ name: "key-a", ...where, secret: "s3cret" })
      const b = yield* member({ name: "key-b", ...where, secret: "s3cret" })
      const plain = yield* member({ name: "no-key", ...where })
      const wrong = yield* member({ name: "wrong-key", ...where, secret: "guess" })
      yield* eventually(a.resolve("key-b"), (s) => s.length === 1)
      const got = yield* collect(b, 2)
      yield* a.broadcast("C", "to key holders")
      const [d] = yield* a.sendTo("key-b", "C", "direct")
      assert.strictEqual(d?.protocol, "tcp")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text).sort(), ["direct", "to key holders"])
      // Many heartbeats later, nobody outside the key is known, or knows anyone.
      yield* Effect.sleep("600 millis")
      assert.deepStrictEqual((yield* a.services).map((s) => s.name), ["key-b"])
      assert.deepStrictEqual(yield* plain.services, [])
      assert.deepStrictEqual(yield* wrong.services, [])
      assert.isAbove((yield* plain.stats).drops["unknown-key"] ?? 0, 0)
      assert.isAbove((yield* wrong.stats).drops.forged ?? 0, 0)
      const aDrops = (yield* a.stats).drops
      assert.isAbove(aDrops.unsealed ?? 0, 0)
      assert.isAbove(aDrops.forged ?? 0, 0)
    }))

  it.live("a captured sealed frame sent again is refused as a replay", () =>
    Effect.gen(function*() {
      const group = testCluster(11)
      const config = { ...group, heartbeat: "30 seconds", ttl: "60 seconds", secret: "s" } as const
      const rx = yield* member({ name: "replay-rx", ...config })
      const tx = yield* member({ name: "replay-tx", ...config })
      yield* eventually(tx.resolve("replay-rx"), (s) => s.length === 1)
      // An eavesdropper on this host: joins the group on loopback and keeps what it hears.
      const captured: Array<Buffer> = []
      const spy = yield* Effect.acquireRelease(
        Effect.callback<dgram.Socket>((resume) => {
          const s = dgram.createSocket({ type: "udp4", reuseAddr: true, reusePort: true })
          s.on("message", (m) => captured.push(m))
          s.bind(group.port, group.address, () => {
            s.addMembership(group.address, "127.0.0.1")
            s.setMulticastInterface("127.0.0.1")
            s.setMulticastTTL(0)
            resume(Effect.succeed(s))
          })
        }),
        (s) => Effect.sync(() => s.close())
      )
      const got = yield* collect(rx, 1)
      yield* tx.broadcast("C", "once")
      yield* eventually(Effect.sync(() => captured.length), (n) => n >= 1)
      assert.notInclude(captured[0]!.toString("latin1"), "once")
      for (let i = 0; i < 3; i++) {
        yield* Effect.callback<void>((resume) => {
          spy.send(captured[0]!, group.port, group.address, () => resume(Effect.void))
        })
      }
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text), ["once"])
      yield* eventually(rx.stats, (s) => (s.drops.replayed ?? 0) >= 3)
    }))

  it.live("keys rotate without downtime: install, use, remove", () =>
    Effect.gen(function*() {
      const config = { ...where, keyring: [{ id: 1, secret: "old" }] }
      const a = yield* member({ name: "rot-a", ...config })
      const b = yield* member({ name: "rot-b", ...config })
      yield* eventually(a.resolve("rot-b"), (s) => s.length === 1)
      const steps: Array<[string, Effect.Effect<unknown, unknown>]> = [
        ["install", Effect.all([a.keyring.install({ id: 2, secret: "new" }), b.keyring.install({ id: 2, secret: "new" })])],
        ["use on a", a.keyring.use(2)], // a seals with 2 while b still seals with 1: both open both
        ["use on b", b.keyring.use(2)],
        ["remove", Effect.all([a.keyring.remove(1), b.keyring.remove(1)])]
      ]
      for (const [step, change] of steps) {
        yield* change
        const atB = yield* collect(b, 1)
        const atA = yield* collect(a, 1)
        yield* a.sendTo("rot-b", "C", `a after ${step}`)
        yield* b.sendTo("rot-a", "C", `b after ${step}`)
        assert.strictEqual((yield* Fiber.join(atB).pipe(Effect.timeout("3 seconds")))[0]?.text, `a after ${step}`)
        assert.strictEqual((yield* Fiber.join(atA).pipe(Effect.timeout("3 seconds")))[0]?.text, `b after ${step}`)
      }
      assert.deepStrictEqual(yield* a.keyring.list, { ids: [2], primary: 2 })
      assert.isUndefined((yield* a.stats).drops.forged)
      assert.isUndefined((yield* b.stats).drops["unknown-key"])
    }))
})

describe("who may join", () => {

  it.effect("with remote above 0, only senders in the allowed networks", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const strict = yield* memberOn(network, { name: "strict", remote: 1, allow: ["10.1.0.0/16"] })
      yield* memberOn(network, { name: "inside", hostId: "0000000000a1", remote: 1 }, "10.1.2.3")
      yield* memberOn(network, { name: "outside", hostId: "0000000000a2", remote: 1 }, "10.2.0.1")
      yield* memberOn(network, { name: "neighbour", remote: 1 }) // this host: always allowed
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* strict.services).map((s) => s.name).sort(), ["inside", "neighbour"])
      assert.isAbove((yield* strict.stats).drops["not-allowed"] ?? 0, 0)
      const bad = yield* Effect.flip(memberOn(network, { name: "x", allow: ["10.0.0.0/33"] }))
      assert.strictEqual((bad as { field?: string }).field, "allow.0")
    }))

  it.effect("a live service's id claimed from another address is refused", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const watcher = yield* memberOn(network, { name: "watcher", remote: 1 })
      yield* memberOn(network, { name: "victim", hostId: "0000000000c1", remote: 1 }, "10.9.0.1")
      yield* TestClock.adjust("10 millis")
      // Same host id and name, another address: an impostor (or a member that moved without leaving).
      yield* memberOn(network, { name: "victim", hostId: "0000000000c1", remote: 1 }, "10.9.0.66")
      yield* TestClock.adjust("10 millis")
      const victims = (yield* watcher.services).filter((s) => s.name === "victim")
      assert.deepStrictEqual(victims.map((s) => s.address), ["10.9.0.1"])
      assert.isAbove((yield* watcher.stats).drops.spoofed ?? 0, 0)
    }))
})
