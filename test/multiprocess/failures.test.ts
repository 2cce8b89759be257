import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { eventually, leavable, member, testCluster } from "../helpers.ts"
import { startAgent } from "../support/hosts.ts"

// Member processes on this host (loopback only), ended by their PIDs.
const where = { ...testCluster(8), heartbeat: "500 millis", ttl: "20 seconds" } as const

const knows = (name: string) => (l: Record<string, any>) => typeof l.found === "string" && l.found.endsWith(`@${name}`)
const lost = (name: string) => (l: Record<string, any>) => typeof l.lost === "string" && l.lost.endsWith(`@${name}`)

describe("failures of member processes", () => {
  it.live("a killed member is lost within seconds once someone fails to reach it, not after its ttl", () =>
    Effect.gen(function*() {
      const victim = yield* startAgent(undefined, { name: "victim", ...where })
      const sender = yield* startAgent(undefined, { name: "sender", ...where })
      const watcher = yield* startAgent(undefined, { name: "watcher", ...where })
      for (const a of [sender, watcher]) yield* a.waitFor(knows("victim"))
      yield* sender.waitFor(knows("watcher"))
      yield* victim.kill("SIGKILL") // no leave: the process just vanishes
      const t0 = Date.now()
      // tcp is refused; the send falls back to udp (which cannot tell), and the
      // refusal makes the sender ping the cluster about the victim.
      const sent = yield* sender.command({ cmd: "sendTo", target: "victim", op: "C", data: "are you there?" })
      assert.strictEqual(sent.ok?.[0]?.protocol, "udp")
      const [atSender, atWatcher] = yield* Effect.all([
        sender.waitFor(lost("victim"), 10_000),
        watcher.waitFor(lost("victim"), 10_000)
      ], { concurrency: "unbounded" })
      const elapsed = Date.now() - t0
      console.log(`killed member lost by the others ${elapsed} ms after the failed send (ttl 20 s, heartbeat 0.5 s)`)
      assert.strictEqual(atSender.why, "expired")
      assert.strictEqual(atWatcher.why, "expired")
      assert.isBelow(elapsed, 10_000) // the ttl is 20 s: only the ping explains this
    }), 30_000)

  it.live("a pinged member that is alive answers with a heartbeat and stays", () =>
    Effect.gen(function*() {
      // Its own heartbeat is far slower than the sender's two-heartbeat window (1 s):
      // only its answer to the ping can keep it known.
      yield* startAgent(undefined, { name: "alive", ...where, protocols: ["udp"], heartbeat: "10 seconds", ttl: "30 seconds" })
      const sender = yield* startAgent(undefined, { name: "pinger", ...where, protocols: ["tcp", "udp"] })
      yield* sender.waitFor(knows("alive"))
      // `alive` speaks udp only; a service value claiming a dead tcp port makes the send fail over tcp.
      const sent = yield* sender.command({ cmd: "sendToFake", target: "alive", op: "C", data: "x", tcpPort: 1 })
      assert.strictEqual(sent.ok?.[0]?.protocol, "udp")
      yield* Effect.sleep("2500 millis") // well past the window
      const services = yield* sender.command({ cmd: "services" })
      assert.deepStrictEqual(services.ok.map((s: { name: string }) => s.name), ["alive"])
      assert.isUndefined(sender.lines.find(lost("alive")))
    }), 30_000)

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it.live(`a member stopped by ${signal} leaves: the others drop it at once`, () =>
      Effect.gen(function*() {
        const leaving = yield* startAgent(undefined, { name: `leaving-${signal}`, ...where })
        const watcher = yield* startAgent(undefined, { name: `watcher-${signal}`, ...where })
        yield* watcher.waitFor(knows(`leaving-${signal}`))
        yield* leaving.kill(signal)
        const event = yield* watcher.waitFor(lost(`leaving-${signal}`), 5_000)
        assert.strictEqual(event.why, "left")
      }), 30_000)
  }

  it.live("a member whose program fails leaves too", () =>
    Effect.gen(function*() {
      const failing = yield* startAgent(undefined, { name: "failing", ...where })
      const watcher = yield* startAgent(undefined, { name: "watcher-fail", ...where })
      yield* watcher.waitFor(knows("failing"))
      yield* failing.tell({ cmd: "fail" }) // it dies: no reply
      const event = yield* watcher.waitFor(lost("failing"), 5_000)
      assert.strictEqual(event.why, "left")
    }), 30_000)
})

describe("a member that was not looking", () => {
  // Synchronous work that keeps the event loop busy: what peers send meanwhile waits in the sockets.
  const busyFor = (millis: number) =>
    Effect.sync(() => {
      const until = Date.now() + millis
      while (Date.now() < until) {
        // busy
      }
    })
  const where = (ttl: "1 second" | "5 seconds") => ({ ...testCluster(8), heartbeat: "100 millis", ttl }) as const

  it.live("whose handler kept its event loop busy past the ttl keeps the members it could not hear meanwhile", () =>
    Effect.gen(function*() {
      const quick = where("1 second")
      const steady = yield* startAgent(undefined, { name: "steady", ...quick })
      const watcher = yield* member({ name: "busy", ...quick })
      yield* eventually(watcher.services, (s) => s.some((x) => x.name === "steady"))
      yield* steady.waitFor((l) => typeof l.found === "string" && l.found.endsWith("@busy"))
      const lost: Array<string> = []
      yield* watcher.events.pipe(
        Stream.runForEach((e) => Effect.sync(() => e._tag === "ServiceLost" && lost.push(e.service.name))),
        Effect.forkScoped
      )
      // A handler doing synchronous work twice the ttl long, on a message from steady.
      const handled = yield* watcher.messages.pipe(
        Stream.take(1),
        Stream.runForEach(() => busyFor(2000)), // steady beats on meanwhile
        Effect.forkScoped
      )
      yield* Effect.sleep("50 millis") // both subscriptions are running
      yield* steady.command({ cmd: "sendTo", target: "busy", op: "C", data: "work" })
      yield* Fiber.join(handled)
      yield* Effect.sleep("1 second")
      assert.deepStrictEqual(lost, [])
    }), 30_000)

  it.live("whose event loop was busy past a query's timeout takes the reply that came meanwhile", () =>
    Effect.gen(function*() {
      const quick = where("5 seconds")
      yield* startAgent(undefined, { name: "replier", ...quick })
      const asker = yield* member({ name: "asker", ...quick })
      yield* eventually(asker.services, (s) => s.some((x) => x.name === "replier"))
      // The replier has no responder for "X": it answers with an error at once.
      const ask = asker.queryAll({ target: "replier", op: "X", data: "", timeout: "1 second" })
      const warm = yield* ask // the connection is up: the next query is written at once
      assert.strictEqual(warm.errors.size, 1)
      const asked = yield* Effect.forkScoped(ask)
      yield* Effect.yieldNow // the query is written
      yield* busyFor(2000)
      const result = yield* Fiber.join(asked)
      assert.deepStrictEqual([result.errors.size, result.missing.length], [1, 0])
    }), 30_000)

  it.live("leaves promptly when a peer connects to it while it leaves", () =>
    Effect.gen(function*() {
      const quick = where("5 seconds")
      yield* startAgent(undefined, { name: "answerer", ...quick })
      const { cluster, leave } = yield* leavable({ name: "leaver", ...quick })
      yield* eventually(cluster.services, (s) => s.some((x) => x.name === "answerer"))
      // A query on a connection still to be opened times out first; the
      // answerer then connects back with its reply as the member leaves.
      const asked = yield* Effect.forkScoped(cluster.queryAll({ target: "answerer", op: "X", data: "", timeout: "1 millis" }))
      yield* Effect.yieldNow
      yield* busyFor(20)
      yield* Fiber.join(asked)
      // Before, the tcp server's close waited for that connection (minutes).
      yield* leave.pipe(Effect.timeout("5 seconds"))
    }), 30_000)
})
