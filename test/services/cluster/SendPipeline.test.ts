import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { HookPoint, HookRejected, MemoryNetwork } from "cluster-comm"
import { collect, memberOn } from "../../helpers.ts"

// The send pipeline's contract (src/services/cluster/SendPipeline.ts).
describe("the send pipeline", () => {
  it.effect("every target is tried even when one fails; the first failure is reported", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const sender = yield* memberOn(network, "sender")
      const one = yield* memberOn(network, "one")
      const two = yield* memberOn(network, "two")
      yield* TestClock.adjust("10 millis")
      // A send hook that cancels what goes to "one", whichever protocol carries it.
      yield* sender.hook(HookPoint.send, (out) =>
        out.targets.some((t) => t.name === "one")
          ? Effect.fail(new HookRejected({ point: "send", reason: "not to one" }))
          : Effect.succeed(out))
      const atOne = yield* collect(one, 1)
      const atTwo = yield* collect(two, 1)
      const failed = yield* Effect.flip(sender.sendTo(["one", "two"], "T", "both"))
      assert.deepStrictEqual(failed._tag === "HookRejected" && failed.reason, "not to one")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(atTwo)).map((m) => m.text), ["both"])
      assert.isUndefined(atOne.pollUnsafe())
    }))

  it.effect("the op hook runs once a message; protocol hooks once each protocol tried, in the peer's order", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const sender = yield* memberOn(network, "sender")
      yield* memberOn(network, "one")
      yield* TestClock.adjust("10 millis")
      const [target] = yield* sender.resolve("one")
      network.refuseTcp(target!.protocols.find((p) => p.protocol === "tcp")!.port)
      const seen: Array<string> = []
      const note = (name: string) => (out: { readonly protocol: string }) =>
        Effect.sync(() => {
          seen.push(`${name} ${out.protocol}`)
          return out as never
        })
      yield* sender.hook(HookPoint.op("T", "send"), note("op"))
      yield* sender.hook(HookPoint.protocol("tcp", "send"), note("protocol"))
      yield* sender.hook(HookPoint.protocol("udp", "send"), note("protocol"))
      const [delivery] = yield* sender.sendTo(target!, "T", "x")
      assert.strictEqual(delivery?.protocol, "udp")
      assert.deepStrictEqual(seen, ["op tcp", "protocol tcp", "protocol udp"])
      // The refused attempt was news: the sender fell back, and counted it.
      assert.strictEqual((yield* sender.stats).fallbacks, 1)
    }))
})
