import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import { TestClock } from "effect/testing"
import { Cluster, ClusterTest, HookPoint, HookRejected, MemoryNetwork } from "cluster-comm"
import { collect, memberOn } from "../../helpers.ts"

// The receive pipeline's contract (src/services/cluster/ReceivePipeline.ts).
describe("the receive pipeline", () => {
  it.effect("a member's own broadcast comes back to it: dropped as its own and counted, never delivered", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const speaker = yield* memberOn(network, "speaker")
      const listener = yield* memberOn(network, "listener")
      yield* TestClock.adjust("10 millis")
      const atSpeaker = yield* collect(speaker, 1)
      const atListener = yield* collect(listener, 1)
      const ownBefore = (yield* speaker.stats).drops.own ?? 0
      yield* speaker.broadcast("B", "to all")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(atListener)).map((m) => m.text), ["to all"])
      assert.isUndefined(atSpeaker.pollUnsafe())
      assert.strictEqual((yield* speaker.stats).drops.own, ownBefore + 1)
    }))

  it.effect("messages arrive in the order sent through slow hooks; a rejected one is dropped alone and counted", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const sender = yield* memberOn(network, "sender")
      const receiver = yield* memberOn(network, "receiver")
      yield* TestClock.adjust("10 millis")
      // The first message's hook takes longest: the others must wait for it.
      yield* receiver.hook(HookPoint.op("M", "receive"), (m) =>
        m.text === "drop me"
          ? Effect.fail(new HookRejected({ point: "op M receive", reason: "no" }))
          : Effect.sleep(m.text === "1" ? "50 millis" : "1 millis").pipe(Effect.as(m)))
      const got = yield* collect(receiver, 3)
      const [target] = yield* sender.resolve("receiver")
      for (const text of ["1", "2", "drop me", "3"]) yield* sender.sendTo(target!, "M", text)
      for (let i = 0; i < 10; i++) yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text), ["1", "2", "3"])
      assert.strictEqual((yield* receiver.stats).drops["hook-rejected"], 1)
    }))

  it.effect("allow takes IPv4 and IPv6 networks: members outside every one are dropped and counted", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const v6 = yield* memberOn(network, { name: "v6-only", remote: 1, allow: ["fd00:1::/32"] })
      const v4 = yield* memberOn(network, { name: "v4-only", remote: 1, allow: ["198.51.100.0/24"] })
      // Members on other hosts: documentation and unique-local addresses on no interface here.
      const far = (name: string, hostId: string, address: string) =>
        Layer.build(ClusterTest(network, { name, hostId, remote: 1 }, { address })).pipe(Effect.map((ctx) => Context.get(ctx, Cluster)))
      yield* far("far-v6", "0000000000a6", "fd00:1:2::7")
      yield* far("far-v4", "0000000000a4", "198.51.100.7")
      yield* far("elsewhere", "0000000000e1", "fd00:2::9")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* v6.services).map((s) => s.name).sort(), ["far-v6", "v4-only"])
      assert.deepStrictEqual((yield* v4.services).map((s) => s.name).sort(), ["far-v4", "v6-only"])
      assert.isAbove((yield* v6.stats).drops["not-allowed"] ?? 0, 0)
      assert.isAbove((yield* v4.stats).drops["not-allowed"] ?? 0, 0)
    }))
})
