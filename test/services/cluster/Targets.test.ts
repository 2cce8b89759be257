import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { MemoryNetwork } from "cluster-comm"
import { collect, memberOn } from "../../helpers.ts"

// The Targets contract (src/services/cluster/Targets.ts), through sendTo.
describe("targets", () => {
  const three = Effect.gen(function*() {
    const network = MemoryNetwork.make({ delay: "1 millis" })
    const sender = yield* memberOn(network, "sender")
    const one = yield* memberOn(network, { name: "one", tags: ["worker", "eu"] })
    const two = yield* memberOn(network, { name: "two", tags: ["worker", "us"] })
    yield* TestClock.adjust("10 millis")
    return { sender, one, two }
  })

  it.effect("a term that matches nothing is ServiceNotFound naming it; nothing is sent", () =>
    Effect.gen(function*() {
      const { sender, one } = yield* three
      const got = yield* collect(one, 1)
      const missed = yield* Effect.flip(sender.sendTo(["one", "nobody"], "T", "x"))
      assert.strictEqual(missed._tag, "ServiceNotFound")
      assert.deepStrictEqual(missed._tag === "ServiceNotFound" && missed.terms, ["nobody"])
      yield* TestClock.adjust("10 millis")
      assert.isUndefined(got.pollUnsafe())
    }))

  it.effect("a service named by several terms gets the message once", () =>
    Effect.gen(function*() {
      const { sender, one } = yield* three
      const atOne = yield* collect(one, 2)
      const deliveries = yield* sender.sendTo(["one", "eu", "worker"], "T", "x")
      assert.deepStrictEqual(deliveries.map((d) => d.service.name).sort(), ["one", "two"])
      yield* TestClock.adjust("10 millis")
      yield* sender.sendTo("one", "T", "second")
      yield* TestClock.adjust("10 millis")
      // The second message is the next one: the first went once.
      assert.deepStrictEqual((yield* Fiber.join(atOne)).map((m) => m.text), ["x", "second"])
    }))

  it.effect("clauses: a bad one is InvalidQuery, none matching sends to nobody", () =>
    Effect.gen(function*() {
      const { sender } = yield* three
      const bad = yield* Effect.flip(sender.sendTo({ where: [{ has: [] }] }, "T", "x"))
      assert.strictEqual(bad._tag, "InvalidQuery")
      assert.deepStrictEqual(yield* sender.sendTo({ where: [{ has: ["asia"] }] }, "T", "x"), [])
      const us = yield* sender.sendTo({ where: [{ has: ["worker"] }, { not: ["eu"] }] }, "T", "x")
      assert.deepStrictEqual(us.map((d) => d.service.name), ["two"])
    }))
})
