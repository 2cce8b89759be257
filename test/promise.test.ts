import { type ChildProcess, spawn } from "node:child_process"
import dgram from "node:dgram"
import { inspect } from "node:util"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { HookPoint as EffectHookPoint } from "cluster-comm"
import {
  type ChannelError,
  HookPoint,
  HookRejected,
  InvalidMessage,
  InvalidQuery,
  JoinError,
  join,
  KeyringError,
  type Message,
  SendFailed,
  type Service,
  ServiceNotFound,
  TagError
} from "cluster-comm/promise"
import { collect, eventually, member, testCluster } from "./helpers.ts"
import { canRunRedis, startRedis } from "./support/redis.ts"

const where = { ...testCluster(22), heartbeat: "200 millis", ttl: "2 seconds" } as const
const until = async (done: () => boolean, within = 5000) => {
  for (const started = Date.now(); !done(); await new Promise((r) => setTimeout(r, 5))) {
    if (Date.now() - started > within) throw new Error("not reached in time")
  }
}
/** A Promise member for the rest of the test (it leaves at the end). */
const joined = (name: string, extra: object = {}) =>
  Effect.acquireRelease(Effect.promise(() => join({ name, ...where, ...extra }, { leaveOnSignals: false })), (m) => Effect.promise(() => m.leave()))
/** What a rejected Promise rejected with. */
const rejection = (p: Promise<unknown>) => Effect.promise(() => p.then(() => undefined, (e: unknown) => e))
/**
 * Runs an ES module program in a process of its own (ended by its PID if it
 * overstays 15 s); `onOutput` sees it when it first prints. Resolves with how
 * it ended and what it printed.
 */
const program = (source: string, onOutput?: (child: ChildProcess) => void) =>
  Effect.promise(() =>
    new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }>((resolve) => {
      const child = spawn(process.execPath, ["--input-type=module", "-e", source], { stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      let err = ""
      child.stdout.on("data", (d) => {
        if (out === "") onOutput?.(child)
        out += d
      })
      child.stderr.on("data", (d) => (err += d))
      const guard = setTimeout(() => child.kill("SIGKILL"), 15_000) // our own child, by its PID
      child.on("exit", (code, signal) => {
        clearTimeout(guard)
        resolve({ code, signal, out, err })
      })
    })
  )

describe("the Promise API (cluster-comm/promise)", () => {
  it.live("a Promise member and an Effect member in one cluster: discovery, events, messages, queries, both ways", () =>
    Effect.gen(function*() {
      const plain = yield* joined("plain")
      const found: Array<string> = []
      plain.on("found", (s) => found.push(s.name))
      const effectful = yield* member({ name: "effectful", ...where })
      yield* effectful.hook(EffectHookPoint.query("Q"), (q) => Effect.succeed(`effect answers ${q.text}`))
      yield* Effect.promise(() => until(() => plain.resolve("effectful").length === 1))
      yield* eventually(effectful.resolve("plain"), (s) => s.length === 1)
      assert.deepStrictEqual(found, ["effectful"])
      assert.deepStrictEqual(plain.ips(), ["127.0.0.1"])
      assert.strictEqual(plain.self.name, "plain")
      // Printed, a member shows who it is and what it knows.
      assert.strictEqual(inspect(plain), `Member { id: '${plain.self.id}', tags: [], services: 1 }`)

      // Promise -> Effect: a message, a query.
      const atEffect = yield* collect(effectful, 1)
      const [delivery] = yield* Effect.promise(() => plain.sendTo("effectful", "C", "from a Promise"))
      assert.strictEqual(delivery?.protocol, "tcp")
      assert.strictEqual((yield* Fiber.join(atEffect))[0]?.text, "from a Promise")
      const asked = yield* Effect.promise(() => plain.queryAll({ target: "effectful", op: "Q", data: "?" }))
      assert.deepStrictEqual([...asked.responses.values()].map((r) => r.text), ["effect answers ?"])
      // One service given as itself: the fiberless way, with the same answer, and a timeout's.
      const [effectfulService] = plain.resolve("effectful")
      const direct = yield* Effect.promise(() => plain.queryAll({ target: effectfulService!, op: "Q", data: "!" }))
      assert.deepStrictEqual([[...direct.responses.values()].map((r) => r.text), direct.complete], [["effect answers !"], true])
      // Nobody answers on that udp port: the query times out, the service missing.
      const silent = yield* Effect.promise(() => plain.queryAll({ target: { ...effectfulService!, protocols: [{ protocol: "udp", port: 9 }] }, op: "Q", data: "!", timeout: "300 millis" }))
      assert.deepStrictEqual([silent.complete, silent.responses.size, silent.errors.size, silent.missing.length], [false, 0, 0, 1])
      const streamed = yield* Effect.promise(async () => {
        const tags: Array<string> = []
        for await (const e of plain.query({ target: "effectful", op: "Q", data: "!" })) tags.push(e._tag)
        return tags
      })
      assert.deepStrictEqual(streamed, ["QueryResponse", "QueryDone"])

      // Effect -> Promise: messages by the emitter and by an async iterator, a query answered by a plain hook.
      const heard: Array<Message> = []
      plain.on("message", (m) => heard.push(m))
      const iterated = (async () => {
        for await (const m of plain.messages()) return m.text
      })()
      yield* Effect.sleep("20 millis")
      const off = plain.hook(HookPoint.query("P"), async (q) => `promise answers ${q.text}`)
      yield* effectful.sendTo("plain", "C", "from Effect")
      yield* Effect.promise(() => until(() => heard.length === 1))
      assert.strictEqual(heard[0]?.from.name, "effectful")
      assert.strictEqual(yield* Effect.promise(() => iterated), "from Effect")
      const answered = yield* effectful.queryAll({ target: "plain", op: "P", data: "?" })
      assert.deepStrictEqual([...answered.responses.values()].map((r) => r.text), ["promise answers ?"])
      off()
      off() // twice is harmless
      const unanswered = yield* effectful.queryAll({ target: "plain", op: "P", data: "?" })
      assert.deepStrictEqual([...unanswered.errors.values()].map((e) => e.message), ["no responder for op P"])

      // Leaving: the Effect member sees it at once; leave() twice is harmless.
      const lost: Array<string> = []
      const events = (async () => {
        for await (const e of plain.events()) if (e._tag === "ServiceFound") return e.service.name
      })()
      assert.strictEqual(yield* Effect.promise(() => events), "effectful")
      plain.on("lost", (s, why) => lost.push(`${s.name} ${why}`))
      yield* Effect.promise(() => plain.leave())
      yield* Effect.promise(() => plain.leave())
      yield* eventually(effectful.services, (s) => s.length === 0)
    }))

  it.live("every error path rejects with an Error carrying the Effect API's _tag and fields", () =>
    Effect.gen(function*() {
      const a = yield* joined("errors-a")
      yield* joined("errors-b")
      yield* Effect.promise(() => until(() => a.resolve("errors-b").length === 1))

      const bad = yield* rejection(join({ name: "bad", port: 0 }, { leaveOnSignals: false }))
      assert.instanceOf(bad, JoinError)
      assert.instanceOf(bad, Error)
      assert.deepStrictEqual([(bad as JoinError)._tag, (bad as JoinError).reason, (bad as JoinError).field], ["JoinError", "InvalidConfig", "port"])

      // A port held by a program that does not share it.
      const holder = dgram.createSocket("udp4")
      yield* Effect.callback<void>((resume) => void holder.bind(where.port + 40, "0.0.0.0", () => resume(Effect.void)))
      const taken = yield* rejection(join({ name: "taken", port: where.port + 40 }, { leaveOnSignals: false }))
      holder.close()
      assert.deepStrictEqual([(taken as JoinError)._tag, (taken as JoinError).reason], ["JoinError", "AddressInUse"])

      const missing = yield* rejection(a.sendTo("nobody", "C", "x"))
      assert.instanceOf(missing, ServiceNotFound)
      assert.deepStrictEqual((missing as ServiceNotFound).terms, ["nobody"])

      // Every protocol failing: a member that speaks tcp alone, to a service whose tcp port nobody listens on.
      const tcpOnly = yield* joined("errors-tcp-only", { protocols: ["tcp"] })
      const [b] = a.resolve("errors-b")
      const ghost: Service = { ...b!, instance: "00000000000000ff", protocols: [{ protocol: "tcp", port: 1 }] }
      const failed = yield* rejection(tcpOnly.sendTo(ghost, "C", "x"))
      assert.instanceOf(failed, SendFailed)
      assert.deepStrictEqual((failed as SendFailed).attempts.map((t) => t.protocol), ["tcp"])
      assert.strictEqual((failed as SendFailed).attempts[0]?.cause._tag, "ProtocolFailure")

      const tooLong = yield* rejection(a.broadcast("x".repeat(40), "x"))
      assert.instanceOf(tooLong, InvalidMessage)
      const tooLongQuery = yield* rejection(a.queryAll({ target: a.resolve("errors-b")[0]!, op: "x".repeat(40), data: "x" }))
      assert.instanceOf(tooLongQuery, InvalidMessage)
      const query = yield* rejection(a.resolver({ has: [] }))
      assert.instanceOf(query, InvalidQuery)
      const tags = yield* rejection(a.updateTags(""))
      assert.instanceOf(tags, TagError)
      const channel = yield* rejection(a.channels.leave(1))
      assert.deepStrictEqual([(channel as ChannelError)._tag, (channel as ChannelError).channel], ["ChannelError", 1])
      const key = yield* rejection(a.keyring.use(9))
      assert.instanceOf(key, KeyringError)

      // A hook that throws cancels the frame: the send rejects with HookRejected naming the point and the reason.
      const off = a.hook(HookPoint.op("C", "send"), () => {
        throw new Error("not today")
      })
      const rejected = yield* rejection(a.sendTo("errors-b", "C", "x"))
      assert.instanceOf(rejected, HookRejected)
      assert.deepStrictEqual([(rejected as HookRejected).point, (rejected as HookRejected).reason], ["op C send", "not today"])
      off()
      // One that throws a HookRejected keeps it.
      a.hook(HookPoint.op("C", "send"), () => {
        throw new HookRejected({ point: "mine", reason: "mine to refuse" })
      })
      const own = yield* rejection(a.broadcast("C", "x"))
      assert.strictEqual((own as HookRejected).reason, "mine to refuse")
    }))

  it.live("an AbortSignal gives up on a join, a send, a query and an iterator, rejecting with its reason; `await using` leaves", () =>
    Effect.gen(function*() {
      const watcher = yield* joined("abort-watcher")
      const seen: Array<string> = []
      watcher.on("found", (s) => seen.push(s.name))
      const reason = new Error("given up")
      const abortedWith = () => {
        const c = new AbortController()
        c.abort(reason)
        return c.signal
      }

      // A join: given up before it starts, or while it binds its sockets.
      assert.strictEqual(yield* rejection(join({ name: "abort-never", ...where }, { leaveOnSignals: false, signal: abortedWith() })), reason)
      const underWay = new AbortController()
      const joining = join({ name: "abort-midway", ...where }, { leaveOnSignals: false, signal: underWay.signal })
      underWay.abort(reason)
      assert.strictEqual(yield* rejection(joining), reason)

      const asker = yield* joined("abort-asker")
      const responder = yield* joined("abort-responder")
      yield* Effect.promise(() => until(() => asker.resolve("abort-responder").length === 1 && responder.resolve("abort-asker").length === 1))
      const [target] = asker.resolve("abort-responder")

      // A send given up before it goes is not sent: the responder hears only the next one.
      const heard: Array<string> = []
      responder.on("message", (m) => heard.push(m.text))
      assert.strictEqual(yield* rejection(asker.sendTo(target!, "C", "never sent", { signal: abortedWith() })), reason)
      yield* Effect.promise(() => asker.sendTo(target!, "C", "sent"))
      yield* Effect.promise(() => until(() => heard.length > 0))
      assert.deepStrictEqual(heard, ["sent"])

      // A query given up while its answer is held back: the answer, when it comes, is dropped and counted.
      let answer: (text: string) => void = () => {}
      let asked = 0
      responder.hook(HookPoint.query("slow"), () => {
        asked++
        return new Promise<string>((resolve) => (answer = resolve))
      })
      const giveUp = new AbortController()
      const slow = asker.queryAll({ target: target!, op: "slow", data: "?", signal: giveUp.signal })
      yield* Effect.promise(() => until(() => asked === 1))
      giveUp.abort(reason)
      assert.strictEqual(yield* rejection(slow), reason)
      answer("too late")
      yield* Effect.promise(() => until(() => asker.stats().drops["unexpected-reply"] === 1))
      // The same, as an iterator.
      const iterating = new AbortController()
      const iterated = (async () => {
        for await (const _ of asker.query({ target: target!, op: "slow", data: "?", signal: iterating.signal })) return "answered"
      })()
      yield* Effect.promise(() => until(() => asked === 2))
      iterating.abort(reason)
      assert.strictEqual(yield* rejection(iterated), reason)
      answer("too late again")
      yield* Effect.promise(() => until(() => asker.stats().drops["unexpected-reply"] === 2))
      // An abort after the answer changes nothing.
      responder.hook(HookPoint.query("fast"), (q) => `fast ${q.text}`)
      const late = new AbortController()
      const fast = yield* Effect.promise(() => asker.queryAll({ target: target!, op: "fast", data: "!", signal: late.signal }))
      late.abort(reason)
      assert.deepStrictEqual([...fast.responses.values()].map((r) => r.text), ["fast !"])

      // Messages as an iterator, until the signal.
      const listening = new AbortController()
      const texts: Array<string> = []
      // What it rejects with, taken at once: it rejects while the sends below go on.
      const listened = (async () => {
        for await (const m of responder.messages({ signal: listening.signal })) if (texts.push(m.text) === 1) listening.abort(reason)
      })().then(() => undefined, (e: unknown) => e)
      // Sent until the iterator, subscribing as it starts, has one (at most 100 times).
      for (let i = 0; i < 100 && texts.length === 0; i++) {
        yield* Effect.promise(() => asker.sendTo(target!, "C", "one"))
        yield* Effect.sleep("20 millis")
      }
      assert.strictEqual(yield* Effect.promise(() => listened), reason)
      assert.deepStrictEqual(texts, ["one"])

      // `await using`: the member leaves at the end of its block, and the others drop it at once.
      const lost: Array<string> = []
      watcher.on("lost", (s, why) => lost.push(`${s.name} ${why}`))
      const left = yield* Effect.promise(async () => {
        await using scoped = await join({ name: "abort-scoped", ...where }, { leaveOnSignals: false })
        await until(() => watcher.resolve("abort-scoped").length === 1)
        assert.strictEqual(scoped.self.name, "abort-scoped")
        return scoped
      })
      yield* Effect.promise(() => until(() => lost.includes("abort-scoped left"), 1000))
      assert.strictEqual(inspect(left), "Member { left: true }")
      assert.notInclude(seen, "abort-never")
      assert.notInclude(seen, "abort-midway")
    }), 20_000)

  it.live("a listener that throws is the program's uncaught exception, as with Node's emitters, and the next events still come", () =>
    Effect.gen(function*() {
      // In a process of its own: an uncaught exception here would be the test runner's.
      const source = (handled: boolean) =>
        `import { join } from "cluster-comm/promise"
         ${handled ? `process.on("uncaughtException", (e) => console.log("uncaught", e.message))` : ""}
         const where = ${JSON.stringify({ ...where, port: where.port + 41 })}
         const [a, b] = [await join({ name: "thrower", ...where }), await join({ name: "sender", ...where })]
         a.on("found", (s) => { throw new Error("found " + s.name) })
         a.on("message", (m) => {
           console.log("got", m.text)
           if (m.text === "one") throw new Error("listener failed")
         })
         while (b.resolve("thrower").length === 0) await new Promise((r) => setTimeout(r, 5))
         for (const text of ["one", "two"]) await b.sendTo("thrower", "C", text)
         await new Promise((r) => setTimeout(r, 300))
         await a.leave(); await b.leave()`
      const handled = yield* program(source(true))
      assert.strictEqual(handled.code, 0, handled.err)
      // The throw comes out after the emit (on the next tick), so "two", in the same read, may come first.
      assert.deepStrictEqual(handled.out.trim().split("\n").filter((l) => !l.startsWith("uncaught found")).sort(), ["got one", "got two", "uncaught listener failed"])
      assert.include(handled.out, "uncaught found sender")
      // Unhandled, it ends the process as any uncaught exception does, with its stack.
      const unhandled = yield* program(source(false))
      assert.strictEqual(unhandled.code, 1)
      assert.match(unhandled.err, /Error: found sender\n\s+at /)
    }), 40_000)

  it.live("a member leaves on SIGTERM and SIGINT (the others drop it at once), and stays silent when it opts out", () =>
    Effect.gen(function*() {
      const watcher = yield* joined("signal-watcher")
      const lost: Array<string> = []
      watcher.on("lost", (s, why) => lost.push(`${s.name} ${why}`))
      // Joins, says so, and is sent `signal` once the watcher knows it.
      const run = (name: string, signal: NodeJS.Signals, opt = true) =>
        program(
          `import { join } from "cluster-comm/promise"
           await join(${JSON.stringify({ name, ...where })}, { leaveOnSignals: ${opt} })
           console.log("joined")`,
          (child) => void until(() => watcher.resolve(name).length === 1).then(() => child.kill(signal)) // our own child, by its PID
        )
      const bySigterm = yield* run("by-sigterm", "SIGTERM")
      assert.strictEqual(bySigterm.signal, "SIGTERM", bySigterm.err) // then the signal does what it would have done
      yield* Effect.promise(() => until(() => lost.includes("by-sigterm left"), 1000))
      yield* run("by-sigint", "SIGINT")
      yield* Effect.promise(() => until(() => lost.includes("by-sigint left"), 1000))
      yield* run("opted-out", "SIGTERM", false)
      yield* Effect.promise(() => until(() => lost.some((l) => l.startsWith("opted-out")), 5000))
      assert.include(lost, "opted-out expired")
    }), 30_000)

  it.live.skipIf(!canRunRedis())("a Promise member through Redis: sources() and `source` events as Redis goes and comes back", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const beyond = { multicast: false, advertise: "127.0.0.1", redis: redis.url }
      const plain = yield* joined("plain-redis", beyond)
      const changes: Array<string> = []
      plain.on("source", (s) => changes.push(`${s.source} ${s.state}`))
      yield* member({ name: "effect-redis", ...where, ...beyond })
      yield* Effect.promise(() => until(() => plain.resolve("effect-redis").length === 1))
      assert.deepStrictEqual(plain.services()[0]!.sources, ["redis"])
      yield* Effect.promise(() => until(() => plain.sources()[0]?.state === "up"))
      yield* redis.freeze
      yield* Effect.promise(() => until(() => changes.includes("redis down")))
      assert.isTrue(plain.services()[0]!.stale)
      yield* redis.thaw
      yield* Effect.promise(() => until(() => plain.sources()[0]?.state === "up" && !plain.services()[0]!.stale))
      assert.deepStrictEqual(changes.slice(-1), ["redis up"])
    }), 30_000)
})
