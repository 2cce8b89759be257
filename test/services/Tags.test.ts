import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import { applyTagChanges, MemoryNetwork, TagError } from "cluster-comm"
import { memberOn } from "../helpers.ts"

const slow = { heartbeat: "1 hour", ttl: "2 hours" } as const
const names = (services: ReadonlyArray<{ readonly name: string }>) => services.map((s) => s.name).sort()

describe("tags", () => {
  it("apply the Tcl modifiers in order", () => {
    const cases: Array<[ReadonlyArray<string>, Parameters<typeof applyTagChanges>[1], ReadonlyArray<string>]> = [
      [["a"], ["b", "a"], ["a", "b"]], // append (default), no repeats
      [["a"], [["b", "c"]], ["a", "b", "c"]],
      [["a", "b"], [{ remove: ["a", "x"] }], ["b"]],
      [["a", "b"], [{ map: ["a", "z"] }], ["z", "b"]], // renamed in place
      [["b"], [{ map: ["a", "z"] }], ["b"]], // only if old exists
      [["a", "b"], [{ mappend: ["a", "z"] }], ["b", "z"]], // remove old, add new
      [["b"], [{ mappend: ["a", "z"] }], ["b", "z"]], // new added even without old
      [["a"], [{ replace: ["x", "y", "x"] }], ["x", "y"]],
      [["a"], ["b", { remove: ["a"] }, { map: ["b", "c"] }, { append: ["d"] }], ["c", "d"]]
    ]
    for (const [from, changes, to] of cases) assert.deepStrictEqual(applyTagChanges(from, changes), to, JSON.stringify(changes))
    assert.instanceOf(applyTagChanges([], [""]), TagError)
    assert.instanceOf(applyTagChanges([], ["x".repeat(65)]), TagError)
    assert.instanceOf(applyTagChanges([], [Array.from({ length: 33 }, (_, i) => `t${i}`)]), TagError)
  })

  it.effect("a change goes out at once, several changes in one tick in one heartbeat", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const a = yield* memberOn(network, { name: "a", tags: ["web"], ...slow })
      const b = yield* memberOn(network, { name: "b", ...slow })
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* b.resolve("a"))[0]?.tags, ["web"])
      const updates = yield* b.events.pipe(
        Stream.filter((e) => e._tag === "ServiceUpdated"),
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Effect.yieldNow
      const before = (yield* b.stats).framesIn
      yield* a.updateTags("eu")
      yield* a.updateTags({ remove: ["web"] })
      const now = yield* a.updateTags({ map: ["eu", "europe"] }, "db")
      assert.deepStrictEqual(now, ["europe", "db"])
      assert.deepStrictEqual(yield* a.tags, ["europe", "db"])
      yield* TestClock.adjust("10 millis")
      const [update] = yield* Fiber.join(updates)
      assert.deepStrictEqual(update?._tag === "ServiceUpdated" && [update.previous.tags, update.service.tags], [["web"], ["europe", "db"]])
      assert.strictEqual((yield* b.stats).framesIn - before, 1) // one heartbeat carried all three changes
      // No change, no heartbeat.
      yield* a.updateTags("db")
      yield* TestClock.adjust("10 millis")
      assert.strictEqual((yield* b.stats).framesIn - before, 1)
      assert.strictEqual((yield* Effect.flip(a.updateTags(""))). _tag, "TagError")
    }))

  it.effect("resolve and the resolver match tags and the other terms", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const me = yield* memberOn(network, { name: "me", remote: 1 })
      yield* memberOn(network, { name: "web-1", tags: ["web", "eu", "v2"], remote: 1 })
      yield* memberOn(network, { name: "web-2", tags: ["web", "us"], remote: 1 })
      yield* memberOn(network, { name: "db-1", tags: ["db", "eu"], remote: 1 })
      yield* memberOn(network, { name: "far", hostId: "0000000000fa", tags: ["web", "eu"], remote: 1 }, "198.51.100.30")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(names(yield* me.resolve("web", "eu")), ["far", "web-1"])
      assert.deepStrictEqual(names(yield* me.resolve("web", "eu", "localhost")), ["web-1"])
      assert.deepStrictEqual(names(yield* me.resolver({ has: ["web"] }, { not: ["us"] })), ["far", "web-1"])
      assert.deepStrictEqual(names(yield* me.resolver({ exact: ["web", "eu"] })), ["far"])
      assert.deepStrictEqual(names(yield* me.resolver({ exact: ["w*", "eu", "v?"], match: "glob" })), ["web-1"])
      assert.deepStrictEqual(names(yield* me.resolver({ some: ["db", "us"] })), ["db-1", "web-2"])
      assert.deepStrictEqual(names(yield* me.resolver({ has: ["web-[12]"], match: "glob" })), ["web-1", "web-2"])
      assert.deepStrictEqual(names(yield* me.resolver({ has: ["web-\\d"], match: "regex" }, { not: ["localhost"] })), [])
      assert.deepStrictEqual(names(yield* me.resolver({ has: ["198\\.51\\..*"], match: "regex" })), ["far"])
      const bad = yield* Effect.flip(me.resolver({ has: ["(unclosed"], match: "regex" }))
      assert.strictEqual(bad._tag, "InvalidQuery")
      assert.strictEqual((yield* Effect.flip(me.resolver({ has: [] })))._tag, "InvalidQuery")
    }))
})
