import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Scope } from "effect"
import { TestClock } from "effect/testing"
import {
  type Cluster,
  type Hook,
  type HookPoint,
  HookPoint as Points,
  HookRejected,
  MemoryNetwork,
  type Message
} from "cluster-comm"
import { collect, memberOn } from "../helpers.ts"

/** Two members that know each other. */
const pair = Effect.gen(function*() {
  const network = MemoryNetwork.make()
  const receiver = yield* memberOn(network, "receiver")
  const sender = yield* memberOn(network, "sender")
  yield* TestClock.adjust("10 millis")
  const [target] = yield* sender.resolve("receiver")
  return { receiver, sender, target: target! }
})

/** A hook that records its label and appends it to the data. */
const marking = <A extends { readonly data: Uint8Array }>(label: string, log: Array<string>): Hook<A> => (value) =>
  Effect.sync(() => {
    log.push(label)
    const data = Buffer.concat([value.data, Buffer.from(`|${label}`)])
    return value instanceof Object && "with" in value && typeof value.with === "function"
      ? value.with({ data })
      : { ...value, data }
  })

const recording = <A>(label: string, log: Array<string>): Hook<A> => (value) =>
  Effect.sync(() => {
    log.push(label)
    return value
  })

const rejecting = <A>(point: string): Hook<A> => () => Effect.fail(new HookRejected({ point, reason: "test" }))

/** Runs `body` with a hook registered in a scope of its own, removed afterwards. */
const withHook = <A, B, E>(cluster: Cluster["Service"], point: HookPoint<A>, hook: Hook<A>, body: Effect.Effect<B, E>) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    yield* cluster.hook(point, hook).pipe(Scope.provide(scope))
    const result = yield* Effect.exit(body)
    yield* Scope.close(scope, Exit.void)
    return result
  })

describe("hooks", () => {
  it.effect("fire in the documented order on send and receive, each seeing the last one's change", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      const sent: Array<string> = []
      const received: Array<string> = []
      yield* sender.hook(Points.send, marking("send", sent))
      yield* sender.hook(Points.protocol("tcp", "send"), marking("protocol tcp send", sent))
      yield* sender.hook(Points.op("C", "send"), marking("op C send", sent))
      yield* receiver.hook(Points.op("C", "receive"), marking("op C receive", received))
      yield* receiver.hook(Points.receive, marking("receive", received))
      yield* receiver.hook(Points.protocol("tcp", "receive"), marking("protocol tcp receive", received))
      yield* receiver.hook(Points.service("validate"), recording("service validate", received))
      yield* receiver.hook(Points.service("eval"), recording("service eval", received))
      // Hooks at points this message does not pass must not fire.
      yield* receiver.hook(Points.op("D", "receive"), marking("op D receive", received))
      yield* receiver.hook(Points.protocol("udp", "receive"), marking("protocol udp receive", received))
      yield* sender.hook(Points.protocol("udp", "send"), marking("protocol udp send", sent))

      const got = yield* collect(receiver, 1)
      const [delivery] = yield* sender.sendTo(target, "C", "x")
      assert.strictEqual(delivery?.protocol, "tcp")
      yield* TestClock.adjust("10 millis")
      const [message] = yield* Fiber.join(got)
      assert.deepStrictEqual(sent, ["op C send", "protocol tcp send", "send"])
      assert.deepStrictEqual(received, [
        "service eval",
        "service validate",
        "protocol tcp receive",
        "receive",
        "op C receive"
      ])
      assert.strictEqual(
        message?.text,
        "x|op C send|protocol tcp send|send|protocol tcp receive|receive|op C receive"
      )
    }))

  it.effect("several hooks at one point run in the order added, each seeing the last one's change; a rejection stops the rest", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      const ran: Array<string> = []
      yield* receiver.hook(Points.op("C", "receive"), marking("first", ran))
      yield* receiver.hook(Points.op("C", "receive"), marking("second", ran))
      yield* receiver.hook(Points.op("C", "receive"), marking("third", ran))
      const got = yield* collect(receiver, 1)
      yield* sender.sendTo(target, "C", "x")
      yield* TestClock.adjust("10 millis")
      const [message] = yield* Fiber.join(got)
      assert.strictEqual(message?.text, "x|first|second|third")
      assert.deepStrictEqual(ran, ["first", "second", "third"])

      ran.length = 0
      const outcome = yield* withHook(sender, Points.op("D", "send"), rejecting("op D send"),
        withHook(sender, Points.op("D", "send"), marking("after the rejection", ran), sender.sendTo(target, "D", "y")))
      assert.isTrue(Exit.isSuccess(outcome) && Exit.isFailure(outcome.value))
      assert.deepStrictEqual(ran, [])
    }))

  it.effect("hooks that hand back a finished value pass the message on at once, before and after hooks that take steps", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      // Effect.succeed is an Exit: these end without a step, the marking one takes one.
      const now = (label: string): Hook<Message> => (m) => Effect.succeed(m.with({ data: Buffer.concat([m.data, Buffer.from(`|${label}`)]) }))
      yield* receiver.hook(Points.protocol("tcp", "receive"), now("protocol"))
      yield* receiver.hook(Points.op("C", "receive"), now("op"))
      const ran: Array<string> = []
      const got = yield* collect(receiver, 2)
      yield* withHook(receiver, Points.receive, marking("receive", ran), Effect.gen(function*() {
        yield* sender.sendTo(target, "C", "x")
        yield* TestClock.adjust("10 millis")
      }))
      yield* sender.sendTo(target, "C", "y")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text), ["x|protocol|receive|op", "y|protocol|op"])
      assert.deepStrictEqual(ran, ["receive"])
    }))

  it.effect("a hook's effect runs with the services of the program that registered it, message after message", () =>
    Effect.gen(function*() {
      class Greeting extends Context.Service<Greeting, { readonly word: string }>()("test/Greeting") {}
      const { receiver, sender, target } = yield* pair
      const heard: Array<string> = []
      yield* receiver.hook(Points.op("C", "receive"), (m: Message) =>
        Effect.gen(function*() {
          heard.push(`${(yield* Greeting).word} ${m.text}`)
          return m
        })).pipe(Effect.provideService(Greeting, Greeting.of({ word: "hello" })))
      const got = yield* collect(receiver, 2)
      yield* sender.sendTo(target, "C", "one")
      yield* TestClock.adjust("10 millis")
      yield* sender.sendTo(target, "C", "two")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text), ["one", "two"])
      assert.deepStrictEqual(heard, ["hello one", "hello two"])
    }))

  it.effect("a rejection at any receive point cancels that message only", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      const points = [
        Points.service("eval"),
        Points.service("validate"),
        Points.protocol("tcp", "receive"),
        Points.receive,
        Points.op("C", "receive")
      ] as const
      for (const point of points) {
        const before = (yield* receiver.stats).drops["hook-rejected"] ?? 0
        const got = yield* collect(receiver, 1)
        yield* withHook(receiver, point as HookPoint<any>, rejecting(point.key), Effect.gen(function*() {
          yield* sender.sendTo(target, "C", "rejected")
          yield* TestClock.adjust("10 millis")
        }))
        yield* sender.sendTo(target, "C", `after ${point.key}`)
        yield* TestClock.adjust("10 millis")
        const [m] = yield* Fiber.join(got)
        assert.strictEqual(m?.text, `after ${point.key}`)
        assert.strictEqual((yield* receiver.stats).drops["hook-rejected"], before + 1, point.key)
      }
    }))

  it.effect("a rejection at any send point fails that send with HookRejected", () =>
    Effect.gen(function*() {
      const { sender, target } = yield* pair
      for (const point of [Points.op("C", "send"), Points.protocol("tcp", "send"), Points.send]) {
        const exit = yield* withHook(sender, point, rejecting(point.key), sender.sendTo(target, "C", "no"))
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) assert.include(String(exit.cause), "HookRejected")
        // The hook is gone with its scope: the same send passes.
        assert.strictEqual((yield* sender.sendTo(target, "C", "yes"))[0]?.protocol, "tcp")
        const broadcastExit = yield* withHook(sender, point, rejecting(point.key), sender.broadcast("C", "no"))
        if (point.key !== "protocol tcp send") {
          assert.isTrue(Exit.isFailure(broadcastExit))
          if (Exit.isFailure(broadcastExit)) assert.include(String(broadcastExit.cause), "HookRejected")
        } else assert.isTrue(Exit.isSuccess(broadcastExit)) // a broadcast goes by udp
      }
    }))

  it.effect("a hook that throws or dies is a logged rejection; the member lives on", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      const got = yield* collect(receiver, 1)
      const throwsOutright: Hook<any> = () => {
        throw new Error("hook bug")
      }
      const dies: Hook<any> = () => Effect.die("boom")
      const returnsNothing: Hook<any> = () => Effect.succeed(undefined)
      for (const hook of [throwsOutright, dies, returnsNothing]) {
        yield* withHook(receiver, Points.receive, hook, Effect.gen(function*() {
          yield* sender.sendTo(target, "C", "lost")
          yield* TestClock.adjust("10 millis")
        }))
      }
      const sendExit = yield* withHook(sender, Points.send, throwsOutright, sender.sendTo(target, "C", "lost"))
      assert.isTrue(Exit.isFailure(sendExit) && String(sendExit.cause).includes("HookRejected"))
      yield* sender.sendTo(target, "C", "alive")
      yield* TestClock.adjust("10 millis")
      assert.strictEqual((yield* Fiber.join(got))[0]?.text, "alive")
      assert.strictEqual((yield* receiver.stats).drops["hook-rejected"], 3)
    }))

  it.effect("a hook registered in a scope goes when the scope closes", () =>
    Effect.gen(function*() {
      const { receiver, sender, target } = yield* pair
      const seen: Array<string> = []
      const got = yield* collect(receiver, 2)
      yield* withHook(receiver, Points.receive, (m) => Effect.sync(() => {
          seen.push(m.text)
          return m
        }), Effect.gen(function*() {
        yield* sender.sendTo(target, "C", "one")
        yield* TestClock.adjust("10 millis")
      }))
      yield* sender.sendTo(target, "C", "two")
      yield* TestClock.adjust("10 millis")
      yield* Fiber.join(got)
      assert.deepStrictEqual(seen, ["one"])
    }))
})
