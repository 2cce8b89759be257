import { randomBytes } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { Cluster } from "cluster-comm"
import * as guide from "../examples/guide.ts"
import { collect, eventually, member, testCluster } from "./helpers.ts"

// The guides' snippets (docs/hooks.md, channels.md, tags.md, queries.md, security.md), run as examples/guide.ts writes them, on real sockets.
const where = { ...testCluster(17), heartbeat: "200 millis", ttl: "2 seconds" } as const
const as = (cluster: Cluster["Service"]) => Effect.provideService(Cluster, cluster)

describe("the guides' snippets, run", () => {
  it.live("hooks, channels, an encrypted channel, tags, resolution, queries and key rotation", () =>
    Effect.gen(function*() {
      const a = yield* member({ name: "guide-a", ...where, tags: ["web", "beta", "v1"] })
      const b = yield* member({ name: "guide-b", ...where, tags: ["worker", "db-main"] })
      yield* eventually(a.services, (s) => s.some((x) => x.name === "guide-b"))
      yield* eventually(b.services, (s) => s.some((x) => x.name === "guide-a"))

      // Hooks on b: "C" is upper-cased, "X" refused.
      yield* guide.hooks.pipe(as(b))
      const atB = yield* collect(b, 1)
      yield* a.sendTo("guide-b", "X", "refused")
      yield* a.sendTo("guide-b", "C", "shout")
      assert.strictEqual((yield* Fiber.join(atB))[0]?.text, "SHOUT")
      yield* eventually(b.stats, (s) => (s.drops["hook-rejected"] ?? 0) === 1)

      // Channels: b joins 7 too and hears both.
      yield* b.channels.join(7)
      const onSeven = yield* collect(b, 2)
      assert.deepStrictEqual(yield* guide.channels("guide-b").pipe(as(a)), [0, 1, 2, 7])
      assert.sameMembers((yield* Fiber.join(onSeven)).map((m) => m.text), ["for channel 7 only", "direct, on 7"])

      // Tags, in order: +eu, -beta, v1 -> v2, then mappend adds v2 (already there).
      assert.deepStrictEqual(yield* guide.tags.pipe(as(a)), ["web", "v2", "eu"])
      yield* eventually(b.resolve("guide-a", "eu"), (s) => s.length === 1)
      const found = yield* guide.resolution.pipe(as(b))
      assert.deepStrictEqual(found, { web: ["guide-a"], exact: [], some: [], regex: ["guide-a"] })

      // Queries: b answers LOAD.
      yield* guide.responder.pipe(as(b))
      const asked = yield* guide.asker.pipe(as(a))
      assert.deepStrictEqual(asked.responses, ["0.42"])
      assert.isTrue(asked.complete)
      assert.deepStrictEqual([...asked.streamed], ["QueryResponse", "QueryDone"])

      // An encrypted channel between two members with the key.
      const key = randomBytes(32)
      yield* guide.encrypted(key).pipe(as(b)) // b joins and seals 7 (no one else has the key yet)
      const sealedAtA = yield* collect(a, 1)
      yield* b.broadcast("S", "the plan", { channel: 7 })
      const seen = (yield* Fiber.join(sealedAtA))[0]
      assert.notInclude(seen?.text ?? "", "the plan") // a is on 7 but has no key
    }), 60_000)

  it.live("key rotation, as the Security section shows it", () =>
    Effect.gen(function*() {
      const m = yield* member({ name: "guide-keys", ...where, keyring: [{ id: 1, secret: "old" }] })
      assert.deepStrictEqual(yield* guide.rotate("new").pipe(as(m)), { ids: [2], primary: 2 })
    }))
})
