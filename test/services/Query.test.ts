import { assert, describe, it } from "@effect/vitest"
import { type Duration, Effect, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import {
  encodeFrame,
  HookPoint,
  HookRejected,
  MemoryNetwork
} from "cluster-comm"
import { eventually, member, memberOn, testCluster } from "../helpers.ts"

/** An asker and two responders to op Q: "quick" answers at once, "slow" after `slowFor`. */
const quickAndSlow = (slowFor: Duration.Input) =>
  Effect.gen(function*() {
    const network = MemoryNetwork.make({ delay: "1 millis" })
    const asker = yield* memberOn(network, "asker")
    const quick = yield* memberOn(network, "quick")
    const slow = yield* memberOn(network, "slow")
    yield* quick.hook(HookPoint.query("Q"), () => Effect.succeed("fast"))
    yield* slow.hook(HookPoint.query("Q"), () => Effect.sleep(slowFor).pipe(Effect.as("late")))
    yield* TestClock.adjust("10 millis")
    return asker
  })
const bothAsked = { target: { where: [{ some: ["quick", "slow"] }] }, op: "Q", data: "?" } as const

describe("queries", () => {
  it.effect("gather every target's response, errors included, then done", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const asker = yield* memberOn(network, "asker")
      const upper = yield* memberOn(network, { name: "upper", tags: ["worker"] })
      const failing = yield* memberOn(network, { name: "failing", tags: ["worker"] })
      yield* memberOn(network, { name: "mute", tags: ["worker"] }) // no responder for the op
      yield* upper.hook(HookPoint.query("Q"), (q) => Effect.succeed(q.text.toUpperCase()))
      yield* failing.hook(HookPoint.query("Q"), () =>
        Effect.fail(new HookRejected({ point: "query Q", reason: "not today" })))
      yield* TestClock.adjust("10 millis")
      const run = yield* asker.queryAll({ target: "worker", op: "Q", data: "hello" }).pipe(Effect.forkChild)
      // Out and back: each hop waits for the clock.
      for (let i = 0; i < 3; i++) yield* TestClock.adjust("10 millis")
      const result = yield* Fiber.join(run)
      assert.isTrue(result.complete)
      assert.deepStrictEqual([...result.responses.values()].map((r) => `${r.service.name}: ${r.text}`), ["upper: HELLO"])
      assert.deepStrictEqual(
        [...result.errors.values()].map((e) => `${e.service.name}: ${e.message}`).sort(),
        ["failing: not today", "mute: no responder for op Q"]
      )
      assert.deepStrictEqual(result.missing, [])
    }))

  it.effect("a target that speaks udp alone is asked by datagram, naming it, and answers", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const asker = yield* memberOn(network, "asker")
      const datagrams = yield* memberOn(network, { name: "datagrams", protocols: ["udp"] })
      yield* datagrams.hook(HookPoint.query("Q"), (q) => Effect.succeed(`by udp: ${q.text}`))
      yield* TestClock.adjust("10 millis")
      const run = yield* asker.queryAll({ target: "datagrams", op: "Q", data: "hi" }).pipe(Effect.forkChild)
      for (let i = 0; i < 3; i++) yield* TestClock.adjust("10 millis")
      const result = yield* Fiber.join(run)
      assert.deepStrictEqual([...result.responses.values()].map((r) => `${r.text} (${r.service.protocols.map((p) => p.protocol)})`), ["by udp: hi (udp)"])
      assert.isTrue(result.complete)
    }))

  it.effect("stream the answers as they come, ending with a timeout that names who did not answer", () =>
    Effect.gen(function*() {
      const asker = yield* quickAndSlow("10 seconds")
      const run = yield* asker.query({ ...bothAsked, timeout: "1 second" }).pipe(
        Stream.runCollect,
        Effect.forkChild
      )
      yield* TestClock.adjust("2 seconds")
      const events = yield* Fiber.join(run)
      assert.deepStrictEqual(events.map((e) => e._tag), ["QueryResponse", "QueryTimeout"])
      const last = events[1]!
      assert.deepStrictEqual(last._tag === "QueryTimeout" && last.missing.map((s) => s.name), ["slow"])
    }))

  it.effect("each query times out at its own deadline, a later and shorter one first", () =>
    Effect.gen(function*() {
      const asker = yield* quickAndSlow("10 seconds")
      const long = yield* asker.queryAll({ ...bothAsked, timeout: "5 seconds" }).pipe(Effect.forkChild)
      yield* TestClock.adjust("100 millis")
      const short = yield* asker.queryAll({ ...bothAsked, timeout: "1 second" }).pipe(Effect.forkChild)
      yield* TestClock.adjust("999 millis")
      assert.isUndefined(short.pollUnsafe(), "the short one waits until its deadline")
      yield* TestClock.adjust("2 millis")
      assert.deepStrictEqual((yield* Fiber.join(short)).missing.map((s) => s.name), ["slow"])
      assert.isUndefined(long.pollUnsafe(), "the long one still waits")
      yield* TestClock.adjust("3898 millis")
      assert.isUndefined(long.pollUnsafe(), "until its own deadline")
      yield* TestClock.adjust("2 millis")
      assert.deepStrictEqual((yield* Fiber.join(long)).missing.map((s) => s.name), ["slow"])
    }))

  it.effect("queryAll on a timeout: the answers so far, who is missing, and a late answer is not taken", () =>
    Effect.gen(function*() {
      const asker = yield* quickAndSlow("3 seconds")
      const run = yield* asker.queryAll({ ...bothAsked, timeout: "1 second" }).pipe(
        Effect.forkChild
      )
      yield* TestClock.adjust("999 millis")
      assert.isUndefined(run.pollUnsafe(), "still waiting before the timeout")
      yield* TestClock.adjust("2 millis")
      const result = yield* Fiber.join(run)
      assert.isFalse(result.complete)
      assert.deepStrictEqual([...result.responses.values()].map((r) => r.text), ["fast"])
      assert.deepStrictEqual(result.missing.map((s) => s.name), ["slow"])
      // The slow answer comes after the query was forgotten: counted, not delivered.
      yield* TestClock.adjust("3 seconds")
      assert.strictEqual((yield* asker.stats).drops["unexpected-reply"], 1)
    }))

  it.effect("an interrupted queryAll forgets its query: the answer that comes later is unexpected", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const asker = yield* memberOn(network, "asker")
      const slow = yield* memberOn(network, "slow")
      yield* slow.hook(HookPoint.query("Q"), () => Effect.sleep("1 second").pipe(Effect.as("late")))
      yield* TestClock.adjust("10 millis")
      const run = yield* asker.queryAll({ target: "slow", op: "Q", data: "?" }).pipe(Effect.forkChild)
      yield* TestClock.adjust("10 millis")
      yield* Fiber.interrupt(run)
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual((yield* asker.stats).drops["unexpected-reply"], 1)
    }))

  it.effect("a responder's hook, finished at once or not: its answer, its rejection, a throw, a defect and nothing each reply as they should", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make({ delay: "1 millis" })
      const asker = yield* memberOn(network, "asker")
      const responder = yield* memberOn(network, "responder")
      const ways: Record<string, (q: { text: string }) => Effect.Effect<string, HookRejected>> = {
        now: (q) => Effect.succeed(`${q.text}!`),
        later: (q) => Effect.sleep("5 millis").pipe(Effect.as(`${q.text}?`)),
        refused: () => Effect.fail(new HookRejected({ point: "query refused", reason: "not for you" })),
        refusedLater: () => Effect.sleep("5 millis").pipe(Effect.andThen(Effect.fail(new HookRejected({ point: "query refusedLater", reason: "not now" })))),
        throws: () => {
          throw new Error("bug")
        },
        dies: () => Effect.die("boom"),
        nothing: () => Effect.succeed(undefined as unknown as string)
      }
      for (const [op, hook] of Object.entries(ways)) yield* responder.hook(HookPoint.query(op), hook)
      yield* TestClock.adjust("10 millis")
      const answers: Record<string, string> = {}
      for (const op of Object.keys(ways)) {
        const run = yield* asker.queryAll({ target: "responder", op, data: "q" }).pipe(Effect.forkChild)
        for (let i = 0; i < 4; i++) yield* TestClock.adjust("5 millis")
        const result = yield* Fiber.join(run)
        const response = [...result.responses.values()][0]
        const error = [...result.errors.values()][0]
        answers[op] = response !== undefined ? `answer ${response.text}` : `error ${error?.message}`
      }
      assert.deepStrictEqual(answers, {
        now: "answer q!",
        later: "answer q?",
        refused: "error not for you",
        refusedLater: "error not now",
        throws: "error hook failed",
        dies: "error hook failed",
        nothing: "error hook returned no value"
      })
    }))

  it.effect("bad requests are typed errors", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const asker = yield* memberOn(network, "asker")
      yield* memberOn(network, "other")
      yield* TestClock.adjust("10 millis")
      assert.strictEqual((yield* Effect.flip(asker.queryAll({ target: "nobody", op: "Q", data: "" })))._tag, "ServiceNotFound")
      assert.strictEqual((yield* Effect.flip(asker.queryAll({ target: "other", op: "", data: "" })))._tag, "InvalidMessage")
      assert.strictEqual(
        (yield* Effect.flip(asker.queryAll({ target: { where: [{ has: ["("], match: "regex" }] }, op: "Q", data: "" })))._tag,
        "InvalidQuery"
      )
      // Nobody to ask: done at once.
      const none = yield* asker.queryAll({ target: [], op: "Q", data: "" })
      assert.isTrue(none.complete)
    }))
})

describe("queries on real sockets", () => {
  const where = { ...testCluster(7), heartbeat: "200 millis", ttl: "2 seconds" } as const

  it.live("100 concurrent queries to two responders all complete with their own answers", () =>
    Effect.gen(function*() {
      const asker = yield* member({ name: "q-asker", ...where })
      for (const name of ["q-one", "q-two"]) {
        const responder = yield* member({ name, ...where, tags: ["responder"] })
        yield* responder.hook(HookPoint.query("ECHO"), (q) => Effect.succeed(`${name}:${q.text}`))
      }
      yield* eventually(asker.resolve("responder"), (s) => s.length === 2)
      const results = yield* Effect.forEach(
        Array.from({ length: 100 }, (_, i) => i),
        (i) => asker.queryAll({ target: "responder", op: "ECHO", data: `#${i}`, timeout: "10 seconds" }),
        { concurrency: "unbounded" }
      )
      results.forEach((r, i) => {
        assert.isTrue(r.complete, `query ${i}`)
        assert.deepStrictEqual([...r.responses.values()].map((x) => x.text).sort(), [`q-one:#${i}`, `q-two:#${i}`])
      })
      assert.isUndefined((yield* asker.stats).drops["unexpected-reply"])
    }))

  it.live("a reply nobody asked for is dropped and counted", () =>
    Effect.gen(function*() {
      const target = yield* member({ name: "q-target", ...where })
      const port = (yield* target.self).protocols.find((p) => p.protocol === "udp")!.port
      const dgram = yield* Effect.promise(() => import("node:dgram"))
      const reply = encodeFrame({
        _tag: "Reply",
        sender: { hostId: "0000000000cc", instance: "00000000000000cc", name: "stranger" },
        id: 12345,
        ok: true,
        data: new Uint8Array([1])
      })
      yield* Effect.callback<void>((resume) => {
        const s = dgram.createSocket("udp4")
        s.send(reply, port, "127.0.0.1", () => {
          s.close()
          resume(Effect.void)
        })
      })
      yield* eventually(target.stats, (s) => (s.drops["unexpected-reply"] ?? 0) === 1)
    }))
})
