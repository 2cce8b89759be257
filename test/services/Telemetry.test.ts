import http from "node:http"
import net from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { type ClusterShape, HookPoint, MemoryNetwork } from "cluster-comm"
import { collect, eventually, member, memberOn, rawMulticast, testCluster } from "../helpers.ts"

const where = { ...testCluster(15), heartbeat: "200 millis", ttl: "2 seconds" } as const

const freePort = Effect.promise(() =>
  new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })
)

const get = (url: string) =>
  Effect.promise(() =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      http.get(url, (res) => {
        let body = ""
        res.on("data", (c: Buffer) => (body += c.toString()))
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
      }).on("error", reject)
    })
  )

/** The value of one series in Prometheus text, by metric name and label substrings. */
const value = (text: string, name: string, ...labels: ReadonlyArray<string>) => {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1))
}

describe("metrics", () => {
  it.live("counters, gauges and histograms as Effect metrics and Prometheus text, served on loopback", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const watched = yield* member({ name: "metered", ...where, metricsPort: port })
      const peer = yield* member({ name: "meter-peer", ...where })
      yield* peer.hook(HookPoint.query("PING"), () => Effect.succeed("pong"))
      const [target] = yield* eventually(peer.resolve("metered"), (s) => s.length === 1)
      yield* eventually(watched.resolve("meter-peer"), (s) => s.length === 1)
      const got = yield* collect(watched, 5)
      for (let i = 0; i < 5; i++) yield* peer.sendTo(target!, "C", `m${i}`)
      yield* Fiber.join(got)
      yield* watched.queryAll({ target: "meter-peer", op: "PING", data: "" })
      const raw = yield* rawMulticast
      yield* Effect.callback<void>((resume) => {
        raw.send(Buffer.from("junk"), where.port, where.address, () => resume(Effect.void))
      })
      yield* eventually(watched.stats, (s) => (s.drops["bad-magic"] ?? 0) >= 1)

      const text = yield* watched.metrics
      const self = (yield* watched.self).id
      assert.include(text, "# TYPE cluster_comm_frames_total counter")
      assert.isAtLeast(value(text, "cluster_comm_frames_total", `service="${self}"`, `direction="in"`, `protocol="tcp"`) ?? 0, 5)
      assert.isAtLeast(value(text, "cluster_comm_frames_total", `direction="in"`, `protocol="udp"`) ?? 0, 1)
      assert.strictEqual(value(text, "cluster_comm_drops_total", `reason="bad-magic"`), 1)
      assert.strictEqual(value(text, "cluster_comm_members", `service="${self}"`), 1)
      assert.strictEqual(value(text, "cluster_comm_query_seconds_count", `service="${self}"`), 1)
      assert.isAbove(value(text, "cluster_comm_bytes_received_total") ?? 0, 0)
      assert.isAbove(value(text, "cluster_comm_bytes_sent_total") ?? 0, 0)
      assert.strictEqual(value(text, "cluster_comm_messages_total", `direction="in"`, `op="C"`), 5)
      assert.isAtLeast(value(text, "cluster_comm_discovery_seconds_count") ?? 0, 1)
      // Another member's series are its own.
      assert.notInclude(text, `service="${(yield* peer.self).id}"`)

      const served = yield* get(`http://127.0.0.1:${port}/metrics`)
      assert.strictEqual(served.status, 200)
      assert.strictEqual(value(served.body, "cluster_comm_drops_total", `reason="bad-magic"`), 1)
      assert.strictEqual((yield* get(`http://127.0.0.1:${port}/other`)).status, 404)
    }))
})

describe("tracing", () => {
  it.effect("with a tracing backend installed: spans for query, sendTo and hooks; with Effect's native tracer, none on the message paths", () =>
    Effect.gen(function*() {
      const names: Array<string> = []
      const recording = Tracer.make({
        span(options) {
          names.push(options.name)
          return Tracer.nativeTracer.span(options)
        }
      })
      // Each responder notes the span its hook runs in.
      const seen: Record<string, string> = {}
      const responder = (name: string) => (member: ClusterShape) =>
        member.hook(HookPoint.query("Q"), () =>
          Effect.option(Effect.currentSpan).pipe(Effect.map((span) => {
            seen[name] = span._tag === "Some" ? span.value.name : "none"
            return "a"
          })))
      const network = MemoryNetwork.make()
      const asker = yield* memberOn(network, "asker").pipe(Effect.withTracer(recording))
      yield* memberOn(network, "backed").pipe(Effect.withTracer(recording), Effect.tap(responder("backed")))
      yield* memberOn(network, "plain").pipe(Effect.tap(responder("plain")))
      yield* TestClock.adjust("10 millis")
      const ask = (name: string) =>
        asker.resolve(name).pipe(
          Effect.flatMap(([target]) => asker.queryAll({ target: target!, op: "Q", data: "" })),
          Effect.forkChild,
          Effect.tap(() => TestClock.adjust("10 millis")),
          Effect.flatMap(Fiber.join)
        )
      assert.strictEqual((yield* ask("backed").pipe(Effect.withTracer(recording))).responses.size, 1)
      // A send that takes the full path: one that names its target by resolve terms.
      yield* asker.sendTo("backed", "C", "x").pipe(Effect.withTracer(recording))
      assert.includeMembers(names, ["cluster-comm.query", "cluster-comm.hook", "cluster-comm.sendTo"])
      assert.strictEqual(seen.backed, "cluster-comm.hook")

      assert.strictEqual((yield* ask("plain")).responses.size, 1)
      assert.strictEqual(seen.plain, "none")
    }))
})
