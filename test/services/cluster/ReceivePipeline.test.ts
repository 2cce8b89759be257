import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { HookPoint, HookRejected, MemoryNetwork } from "cluster-comm"
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
})
