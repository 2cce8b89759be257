import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import { ClusterTest, MemoryNetwork } from "cluster-comm"
import { quickProgram } from "../program.ts"
import { collect, memberOn } from "../helpers.ts"

describe("ClusterTest: the in-memory network on the test clock", () => {
  it.effect("runs the quick example program unchanged", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const one = yield* memberOn(network, "service_one")
      const two = yield* memberOn(network, "service_two")
      const atOne = yield* collect(one, 2)
      const atTwo = yield* collect(two, 1)
      const run = yield* quickProgram.pipe(
        Effect.provide(ClusterTest(network, "service_three")),
        Effect.forkChild
      )
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(run)
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(result.seen, ["service_one", "service_two"])
      assert.deepStrictEqual(result.ips, ["127.0.0.1"])
      assert.strictEqual(result.delivery.protocol, "tcp")
      const gotOne = yield* Fiber.join(atOne)
      const gotTwo = yield* Fiber.join(atTwo)
      assert.sameMembers(gotOne.map((m) => `${m.text} by ${m.protocol}`), ["Hello, Foo! by udp", "Hello, Bar! by tcp"])
      assert.deepStrictEqual(gotTwo.map((m) => m.text), ["Hello, Foo!"])
    }))

  it.effect("discovers a running cluster by probe, without waiting for a heartbeat", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const slow = { heartbeat: "1 hour", ttl: "2 hours" } as const
      yield* memberOn(network, { name: "a", ...slow })
      yield* memberOn(network, { name: "b", ...slow })
      const c = yield* memberOn(network, { name: "c", ...slow })
      // One round trip: the probe out, the answers back.
      yield* TestClock.adjust("2 millis")
      assert.deepStrictEqual((yield* c.services).map((s) => s.name).sort(), ["a", "b"])
    }))

  it.effect("expires a silent member after its ttl", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const watcher = yield* memberOn(network, { name: "watcher", heartbeat: "1 second", ttl: "3 seconds" })
      const lost = yield* watcher.events.pipe(
        Stream.filter((e) => e._tag === "ServiceLost"),
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Effect.yieldNow
      yield* memberOn(network, { name: "silent", heartbeat: "1 hour", ttl: "2 hours" })
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual((yield* watcher.services).map((s) => s.name), ["silent"])
      yield* TestClock.adjust("2 seconds")
      const [event] = yield* Fiber.join(lost)
      assert.deepStrictEqual(event?._tag === "ServiceLost" && [event.service.name, event.why], ["silent", "expired"])
    }))

  it.effect("falls back from refused tcp to udp, with a target filter", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const one = yield* memberOn(network, "one")
      const two = yield* memberOn(network, "two")
      const sender = yield* memberOn(network, "sender")
      const atOne = yield* collect(one, 1)
      yield* TestClock.adjust("10 millis")
      const [target] = yield* sender.resolve("one")
      network.refuseTcp(target!.protocols.find((p) => p.protocol === "tcp")!.port)
      const [delivery] = yield* sender.sendTo(target!, "C", "over udp")
      assert.strictEqual(delivery?.protocol, "udp")
      yield* TestClock.adjust("10 millis")
      const [m] = yield* Fiber.join(atOne)
      assert.strictEqual(m?.text, "over udp")
      assert.strictEqual(m?.protocol, "udp")
      assert.isUndefined((yield* two.stats).drops.filtered) // unicast: two never saw it
    }))

  it.effect("remote 0 drops frames from other hosts; remote above 0 accepts them", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const hostOnly = yield* memberOn(network, "host-only")
      const lan = yield* memberOn(network, { name: "lan", remote: 1 })
      // TEST-NET-2: an address that is on no interface of this machine.
      yield* Layer.build(ClusterTest(network, { name: "far", hostId: "0000000000ff" }, { address: "198.51.100.7" }))
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* hostOnly.services).map((s) => s.name).sort(), ["lan"])
      assert.isAbove((yield* hostOnly.stats).drops["non-local"] ?? 0, 0)
      const far = (yield* lan.services).find((s) => s.name === "far")
      assert.strictEqual(far?.address, "198.51.100.7")
      assert.isFalse(far?.local)
    }))

  it.effect("resolves by name, id, host id, address and localhost; every term must match", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const me = yield* memberOn(network, "me")
      yield* memberOn(network, { name: "web", hostId: "0000000000a1" })
      yield* memberOn(network, { name: "db", hostId: "0000000000a1" })
      yield* Layer.build(ClusterTest(network, { name: "web", hostId: "0000000000b2", remote: 1 }, { address: "198.51.100.9" }))
      const lan = yield* memberOn(network, { name: "lan-view", remote: 1 })
      yield* TestClock.adjust("10 millis")
      const ids = (services: ReadonlyArray<{ readonly id: string }>) => services.map((s) => s.id).sort()
      assert.deepStrictEqual(ids(yield* me.resolve("web")), ["0000000000a1@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("web")), ["0000000000a1@web", "0000000000b2@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("0000000000b2@web")), ["0000000000b2@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("0000000000a1")), ["0000000000a1@db", "0000000000a1@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("198.51.100.9")), ["0000000000b2@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("web", "localhost")), ["0000000000a1@web"])
      assert.deepStrictEqual(ids(yield* lan.resolve("db", "198.51.100.9")), [])
      assert.deepStrictEqual(yield* lan.resolve("nothing"), [])
      // sendTo by term: every match gets it; no match is a typed error.
      const sent = yield* lan.sendTo("web", "C", "to both")
      assert.deepStrictEqual(sent.map((d) => d.service.id).sort(), ["0000000000a1@web", "0000000000b2@web"])
      const error = yield* Effect.flip(lan.sendTo(["db", "nothing"], "C", "x"))
      assert.strictEqual(error._tag, "ServiceNotFound")
    }))

  it.effect("a late events subscriber first gets every service already known, then live events", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const a = yield* memberOn(network, "a")
      yield* memberOn(network, "b")
      yield* TestClock.adjust("10 millis")
      const events = yield* a.events.pipe(Stream.take(2), Stream.runCollect, Effect.forkChild)
      yield* Effect.yieldNow
      yield* memberOn(network, "c")
      yield* TestClock.adjust("10 millis")
      const seen = yield* Fiber.join(events)
      assert.deepStrictEqual(seen.map((e) => `${e._tag} ${e.service.name}`), ["ServiceFound b", "ServiceFound c"])
    }))

  it.effect("a member heard only by its 20-byte beats is asked for its descriptor, and then known in full", () =>
    Effect.gen(function*() {
      // Every datagram lost while both join: neither hears the other's join.
      const network = MemoryNetwork.make({ loss: 1 })
      const a = yield* memberOn(network, { name: "a", heartbeat: "1 second", ttl: "5 seconds" })
      yield* memberOn(network, { name: "b", heartbeat: "1 second", ttl: "5 seconds", tags: ["late"] })
      yield* TestClock.adjust("100 millis")
      assert.deepStrictEqual(yield* a.services, [])
      // From now on only periodic beats go out: no name, no tags, no ports in them.
      network.loss = 0
      for (let i = 0; i < 4; i++) yield* TestClock.adjust("500 millis")
      const [b] = yield* a.resolve("b")
      assert.deepStrictEqual(b?.tags, ["late"])
      assert.deepStrictEqual(b?.protocols.map((p) => p.protocol), ["tcp", "udp"])
    }))
})
