import { assert, describe, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import { type ClusterEvent, HookPoint, HookRejected, Hooks, Registry, Stats } from "cluster-comm"

const self = { id: "aaaaaaaaaaaa@me", instance: "00000000000000ff" }
const deps = Layer.mergeAll(Hooks.layer, Stats.layer)
const registry = Registry.layer({ ttl: Duration.seconds(3), self, bufferSize: 64, maxServices: 3 }).pipe(Layer.provideMerge(deps))

const sender = (name: string, instance = "0000000000000001") => ({ hostId: "bbbbbbbbbbbb", instance, name })
const sighting = (name: string, instance?: string) => ({
  sender: sender(name, instance),
  address: "127.0.0.1",
  protocols: [{ protocol: "tcp" as const, port: 4000 }]
})

/** Collects the next `n` events, subscribing before `trigger` runs. */
const nextEvents = (n: number) =>
  Effect.gen(function*() {
    const r = yield* Registry
    const fiber = yield* r.events.pipe(Stream.take(n), Stream.runCollect, Effect.forkChild)
    yield* Effect.yieldNow
    return fiber
  })

const tags = (events: ReadonlyArray<ClusterEvent>) => events.map((e) => e._tag)

describe("Registry", () => {
  it.effect("finds, refreshes and expires a service on the test clock", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const events = yield* nextEvents(2)
      yield* r.observe(sighting("one"))
      yield* TestClock.adjust("2 seconds")
      yield* r.observe(sighting("one")) // heard again: the ttl starts over
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual((yield* r.list).map((s) => s.name), ["one"])
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual(yield* r.list, [])
      const seen = yield* Fiber.join(events)
      assert.deepStrictEqual(tags(seen), ["ServiceFound", "ServiceLost"])
      assert.strictEqual((seen[1] as Extract<ClusterEvent, { _tag: "ServiceLost" }>).why, "expired")
    }).pipe(Effect.provide(registry)))

  it.effect("a suspected service is lost at its deadline, long before its ttl; heard from, it is not", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      yield* r.observe(sighting("one"))
      yield* r.observe(sighting("two", "0000000000000002"))
      yield* TestClock.adjust("100 millis")
      // The sweep sleeps towards the ttl (3 s); a suspicion must wake it.
      const [one, two] = yield* r.list
      r.suspect(one!.id, Duration.millis(500))
      r.suspect(two!.id, Duration.millis(500))
      yield* TestClock.adjust("300 millis")
      yield* r.observe(sighting("two", "0000000000000002")) // two answers in time
      yield* TestClock.adjust("300 millis")
      assert.deepStrictEqual((yield* r.list).map((s) => s.name), ["two"])
    }).pipe(Effect.provide(registry)))

  it.effect("drops a service that leaves, but only for the instance that left", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      yield* r.observe(sighting("one", "0000000000000001"))
      yield* r.leave(sender("one", "0000000000000009")) // a stale instance's leave
      assert.strictEqual((yield* r.list).length, 1)
      // A late subscriber first hears of the services already known.
      const events = yield* nextEvents(2)
      yield* r.leave(sender("one", "0000000000000001"))
      const [found, lost] = yield* Fiber.join(events)
      assert.strictEqual(found?._tag, "ServiceFound")
      assert.strictEqual(lost?._tag, "ServiceLost")
      assert.strictEqual((lost as Extract<ClusterEvent, { _tag: "ServiceLost" }>).why, "left")
    }).pipe(Effect.provide(registry)))

  it.effect("tells a restart (updated) from two live instances (conflict)", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const stats = yield* Stats
      const events = yield* nextEvents(3)
      yield* r.observe(sighting("one", "0000000000000001"))
      const restarted = yield* r.observe(sighting("one", "0000000000000002"))
      assert.strictEqual(restarted?.instance, "0000000000000002")
      // The old instance is heard again: both are alive.
      const old = yield* r.observe(sighting("one", "0000000000000001"))
      assert.isUndefined(old)
      yield* r.observe(sighting("one", "0000000000000001"))
      const seen = yield* Fiber.join(events)
      assert.deepStrictEqual(tags(seen), ["ServiceFound", "ServiceUpdated", "ServiceConflict"])
      assert.strictEqual((yield* r.list)[0]?.instance, "0000000000000002")
      assert.strictEqual((yield* stats.snapshot).drops.conflict, 2)
    }).pipe(Effect.provide(registry)))

  it.effect("reports another process claiming our own id as a conflict", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const events = yield* nextEvents(1)
      const result = yield* r.observe({ ...sighting("me"), sender: { hostId: "aaaaaaaaaaaa", instance: "0000000000000003", name: "me" } })
      assert.isUndefined(result)
      assert.strictEqual((yield* Fiber.join(events))[0]?._tag, "ServiceConflict")
      assert.deepStrictEqual(yield* r.list, [])
    }).pipe(Effect.provide(registry)))

  it.effect("runs eval then found for a new service, eval then validate for a known one; rejection keeps it out", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const hooks = yield* Hooks
      const stats = yield* Stats
      const order: Array<string> = []
      for (const stage of ["eval", "validate", "found"] as const) {
        yield* hooks.register(HookPoint.service(stage), (s) => Effect.sync(() => {
          order.push(stage)
          return s
        }))
      }
      yield* hooks.register(HookPoint.service("found"), (s) =>
        s.name === "intruder" ? Effect.fail(new HookRejected({ point: "service found", reason: "not welcome" })) : Effect.succeed(s))
      yield* r.observe(sighting("one"))
      yield* r.observe({ ...sighting("one"), protocols: [{ protocol: "udp", port: 5000 }] })
      assert.deepStrictEqual(order, ["eval", "found", "eval", "validate"])
      assert.isUndefined(yield* r.observe(sighting("intruder")))
      assert.deepStrictEqual((yield* r.list).map((s) => s.name), ["one"])
      assert.strictEqual((yield* stats.snapshot).drops["hook-rejected"], 1)
      // eval may change what is recorded, not who it is.
      yield* hooks.register(HookPoint.service("eval"), (s) => Effect.succeed({ ...s, name: "renamed", address: "10.9.9.9" }))
      const changed = yield* r.observe({ ...sighting("one"), protocols: [{ protocol: "tcp", port: 1 }] })
      assert.strictEqual(changed?.name, "one")
      assert.strictEqual(changed?.address, "10.9.9.9")
    }).pipe(Effect.provide(registry)))

  it.effect("runs the lost hook when a service expires", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const hooks = yield* Hooks
      const lost: Array<string> = []
      yield* hooks.register(HookPoint.service("lost"), (s) => Effect.sync(() => {
          lost.push(s.name)
          return s
        }))
      yield* r.observe(sighting("one"))
      yield* TestClock.adjust("4 seconds")
      assert.deepStrictEqual(lost, ["one"])
    }).pipe(Effect.provide(registry)))

  it.effect("knows at most maxServices services; strangers past that are refused and counted", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const stats = yield* Stats
      for (const name of ["a", "b", "c", "d", "e"]) yield* r.observe(sighting(name))
      assert.deepStrictEqual((yield* r.list).map((s) => s.name), ["a", "b", "c"])
      assert.strictEqual((yield* stats.snapshot).drops["registry-full"], 2)
      yield* r.leave(sender("a"))
      yield* r.observe(sighting("d"))
      assert.deepStrictEqual((yield* r.list).map((s) => s.name), ["b", "c", "d"])
    }).pipe(Effect.provide(registry)))

  it.effect("a late subscriber gets the snapshot once, then a service found again after it was lost", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      yield* r.observe(sighting("one"))
      const events = yield* nextEvents(3)
      yield* r.leave(sender("one"))
      yield* r.observe(sighting("one"))
      assert.deepStrictEqual(tags(yield* Fiber.join(events)), ["ServiceFound", "ServiceLost", "ServiceFound"])
    }).pipe(Effect.provide(registry)))

  it.effect("an events subscriber bufferSize events behind loses the next ones, each counted, then hears again", () =>
    Effect.gen(function*() {
      const r = yield* Registry
      const stats = yield* Stats
      // A subscriber held on its first event while five more are published.
      const held = yield* Deferred.make<void>()
      const events = yield* r.events.pipe(
        Stream.tap(() => Deferred.await(held)),
        Stream.take(4),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Effect.yieldNow
      for (const name of ["a", "b", "c", "d", "e", "f"]) yield* r.observe(sighting(name))
      assert.strictEqual((yield* stats.snapshot).drops["subscriber-full"], 3)
      yield* Deferred.succeed(held, undefined)
      yield* r.observe(sighting("g"))
      const seen = yield* Fiber.join(events)
      assert.deepStrictEqual(seen.map((e) => (e as Extract<ClusterEvent, { _tag: "ServiceFound" }>).service.name), ["a", "b", "c", "g"])
    }).pipe(Effect.provide(Registry.layer({ ttl: Duration.seconds(3), self, bufferSize: 2, maxServices: 10 }).pipe(Layer.provideMerge(deps)))))
})
