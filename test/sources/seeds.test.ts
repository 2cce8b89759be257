/**
 * The seeds source on this host: members with multicast off find each other
 * by unicast probes to a seed's fixed port, keep each other alive by unicast
 * beats, and exchange sendTo and broadcast. Loopback only (`advertise`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import type { Cluster } from "cluster-comm"
import { collect, eventually, leavable, member, testCluster } from "../helpers.ts"
import { freeUdpPort } from "../support/ports.ts"

const cluster = testCluster(41)
const base = { ...cluster, multicast: false, advertise: "127.0.0.1", heartbeat: "200 millis", ttl: "600 millis" } as const


const names = (c: Cluster["Service"]) => Effect.map(c.services, (ss) => ss.map((s) => s.name).sort().join())

describe("seeds", () => {
  it.live("members without multicast find each other through a seed, talk, and see a leave at once", () =>
    Effect.gen(function*() {
      const seedPort = yield* freeUdpPort
      const seed = yield* member({ ...base, name: "seed", seedPort })
      const a = yield* member({ ...base, name: "a", seeds: [`127.0.0.1:${seedPort}`] })
      const b = yield* leavable({ ...base, name: "b", seeds: [`localhost:${seedPort}`] })
      yield* eventually(names(seed), (n) => n === "a,b")
      const known = yield* eventually(a.services, (ss) => ss.some((s) => s.name === "seed"))
      const atA = known.find((s) => s.name === "seed")!
      assert.deepStrictEqual(atA.sources, ["seeds"])
      assert.isFalse(atA.stale)
      const status = yield* a.sources
      assert.deepStrictEqual(status.map((s) => [s.source, s.state]), [["seeds", "up"]])

      // Kept alive by unicast beats, well past the ttl.
      yield* Effect.sleep("1500 millis")
      assert.include(yield* names(a), "seed")
      assert.strictEqual(yield* names(seed), "a,b")

      // A direct message, and a broadcast, reach members the group does not.
      const atSeed = yield* collect(seed, 2)
      yield* a.sendTo("seed", "C", "hello seed")
      yield* a.broadcast("B", "to all")
      assert.deepStrictEqual((yield* Fiber.join(atSeed)).map((m) => `${m.op}:${m.text}`).sort(), ["B:to all", "C:hello seed"])

      // b leaves: the seed hears it at once (a unicast leave), well before the ttl.
      yield* b.leave
      yield* eventually(names(seed), (n) => n === "a", "300 millis")
    }))

  it.live("a seed that is not there yet is probed until it comes", () =>
    Effect.gen(function*() {
      const seedPort = yield* freeUdpPort
      const a = yield* member({ ...base, name: "early", seeds: [`127.0.0.1:${seedPort}`] })
      yield* Effect.sleep("700 millis")
      assert.strictEqual(yield* names(a), "")
      yield* member({ ...base, name: "late-seed", seedPort })
      yield* eventually(names(a), (n) => n === "late-seed", "3 seconds")
    }))

  it.live("one seed is enough: members that list only the seed find each other through it (Peers)", () =>
    Effect.gen(function*() {
      const seedPort = yield* freeUdpPort
      yield* member({ ...base, name: "the-seed", seedPort })
      const a = yield* member({ ...base, name: "first", seeds: [`127.0.0.1:${seedPort}`] })
      yield* eventually(names(a), (n) => n === "the-seed")
      const b = yield* member({ ...base, name: "second", seeds: [`127.0.0.1:${seedPort}`] })
      // second learns first from the seed's Peers frame, probes it, and both know each other.
      yield* eventually(names(b), (n) => n === "first,the-seed")
      yield* eventually(names(a), (n) => n === "second,the-seed")
      const atB = (yield* b.services).find((s) => s.name === "first")!
      assert.deepStrictEqual(atB.sources, ["seeds"])
      const got = yield* collect(a, 1)
      yield* b.sendTo("first", "C", "met through a seed")
      assert.strictEqual((yield* Fiber.join(got))[0]!.text, "met through a seed")
      // Kept alive by their own unicast beats.
      yield* Effect.sleep("1500 millis")
      assert.strictEqual(yield* names(b), "first,the-seed")
    }))
})
