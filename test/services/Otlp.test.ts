import http from "node:http"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as Otlp from "effect/observability/Otlp"
import { Cluster, ClusterLive, HookPoint } from "cluster-comm"
import { eventually, member, testCluster } from "../helpers.ts"

const where = { ...testCluster(20), heartbeat: "200 millis", ttl: "2 seconds" } as const

/** A small OTLP/HTTP receiver on loopback: what arrives at /v1/traces and /v1/metrics, as JSON. */
const receiver = Effect.acquireRelease(
  Effect.callback<{ readonly url: string; readonly received: Map<string, Array<any>>; readonly server: http.Server }>((resume) => {
    const received = new Map<string, Array<any>>()
    const server = http.createServer((req, res) => {
      let body = ""
      req.on("data", (c: Buffer) => (body += c.toString()))
      req.on("end", () => {
        const list = received.get(req.url ?? "") ?? []
        list.push(JSON.parse(body))
        received.set(req.url ?? "", list)
        res.writeHead(200, { "content-type": "application/json" }).end("{}")
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number }
      resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, received, server }))
    })
  }),
  ({ server }) => Effect.callback<void>((resume) => void server.close(() => resume(Effect.void)))
)

const spanNames = (batches: ReadonlyArray<any>) =>
  batches.flatMap((b) => b.resourceSpans.flatMap((r: any) => r.scopeSpans.flatMap((s: any) => s.spans.map((span: any) => span.name))))
const metricNames = (batches: ReadonlyArray<any>) =>
  batches.flatMap((b) => b.resourceMetrics.flatMap((r: any) => r.scopeMetrics.flatMap((s: any) => s.metrics.map((m: any) => m.name))))

describe("OpenTelemetry export", () => {
  it.live("a member's spans and metrics reach an OTLP collector through effect/observability's Otlp layer", () =>
    Effect.gen(function*() {
      const collector = yield* receiver
      const peer = yield* member({ name: "otlp-peer", ...where })
      yield* peer.hook(HookPoint.query("PING"), () => Effect.succeed("pong"))
      // As docs/observability.md shows: the exporter provided around the program and its member.
      const observability = Otlp.layerJson({
        baseUrl: collector.url,
        resource: { serviceName: "cluster-comm-test" },
        tracerExportInterval: "100 millis",
        metricsExportInterval: "100 millis"
      }).pipe(Layer.provide(FetchHttpClient.layer))
      yield* Effect.gen(function*() {
        yield* eventually(Cluster.resolve("otlp-peer"), (s) => s.length === 1)
        // By resolve terms: the full send path, which is traced.
        yield* Cluster.sendTo("otlp-peer", "C", "traced")
        yield* Cluster.queryAll({ target: "otlp-peer", op: "PING", data: "" })
        // And to a service given as itself (the accessor's shorter way): traced as well.
        const [peerService] = yield* Cluster.resolve("otlp-peer")
        yield* Cluster.queryAll({ target: peerService!, op: "PING", data: "" })
        yield* eventually(
          Effect.sync(() => ({
            spans: spanNames(collector.received.get("/v1/traces") ?? []),
            metrics: metricNames(collector.received.get("/v1/metrics") ?? [])
          })),
          ({ spans, metrics }) =>
            spans.includes("cluster-comm.sendTo") && spans.filter((n) => n === "cluster-comm.query").length === 2 &&
            metrics.includes("cluster_comm_query_seconds")
        )
      }).pipe(Effect.provide(ClusterLive({ name: "otlp-member", ...where })), Effect.provide(observability))
      const spans = spanNames(collector.received.get("/v1/traces") ?? [])
      assert.includeMembers(spans, ["cluster-comm.sendTo", "cluster-comm.query"])
    }))
})
