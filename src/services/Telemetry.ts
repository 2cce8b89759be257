/**
 * Telemetry: the member's counters as Effect metrics, so any exporter plugged
 * into Effect (OpenTelemetry among them) sees them, and as Prometheus text,
 * optionally served on a loopback port.
 *
 * The per-frame path only bumps plain counters (Stats), and the registry notes
 * how long each service took to find; every 10 seconds, and whenever metrics
 * are read, their growth is pushed into Effect's `Metric`s, each series
 * attributed with this member's `service` id.
 *
 * | metric | type | attributes |
 * | --- | --- | --- |
 * | `cluster_comm_frames_total` | counter | `service`, `direction` (in, out), `protocol` |
 * | `cluster_comm_bytes_received_total`, `cluster_comm_bytes_sent_total` | counter | `service` |
 * | `cluster_comm_messages_total` | counter | `service`, `direction`, `op` |
 * | `cluster_comm_drops_total` | counter | `service`, `reason` |
 * | `cluster_comm_send_failures_total` | counter | `service` |
 * | `cluster_comm_fallbacks_total` | counter | `service` |
 * | `cluster_comm_members` | gauge | `service` |
 * | `cluster_comm_query_seconds` | histogram | `service` |
 * | `cluster_comm_discovery_seconds` | histogram | `service`: from our join to finding each service already there |
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import { JoinError } from "../schema/Errors.ts"
import { Registry } from "./Registry.ts"
import { Stats, type StatsSnapshot } from "./Stats.ts"

const frames = Metric.counter("cluster_comm_frames_total", { description: "Frames received and sent, by direction and protocol" })
const bytesIn = Metric.counter("cluster_comm_bytes_received_total", { description: "Bytes received" })
const bytesOut = Metric.counter("cluster_comm_bytes_sent_total", { description: "Bytes sent" })
const messages = Metric.counter("cluster_comm_messages_total", { description: "Messages delivered and sent, by op" })
const discoverySeconds = Metric.histogram("cluster_comm_discovery_seconds", {
  description: "From joining to finding each service already in the cluster",
  boundaries: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
})
const drops = Metric.counter("cluster_comm_drops_total", { description: "Frames dropped, by reason" })
const sendFailures = Metric.counter("cluster_comm_send_failures_total", { description: "Direct sends that failed on every protocol" })
const fallbacks = Metric.counter("cluster_comm_fallbacks_total", { description: "Direct sends carried by a fallback protocol" })
const members = Metric.gauge("cluster_comm_members", { description: "Services known" })
/** How long queries take, from sending to the last answer (or the timeout). */
export const querySeconds = Metric.histogram("cluster_comm_query_seconds", {
  description: "Query duration",
  boundaries: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
})

export class Telemetry extends Context.Service<Telemetry, {
  /** Brings the Effect metrics up to date with the counters. */
  readonly publish: Effect.Effect<void>
  /** This member's metrics in the Prometheus text format. */
  readonly prometheus: Effect.Effect<string>
  /** Records a query's duration (plain code: the round trip's hot path). */
  readonly queried: (seconds: number) => void
}>()("cluster-comm/Telemetry") {
  static readonly layer = (options: { readonly service: string; readonly port?: number | undefined }) =>
    Layer.effect(
      Telemetry,
      Effect.gen(function*() {
        const stats = yield* Stats
        const registry = yield* Registry
        const service = options.service
        const tagged = <M extends Metric.Metric<any, any>>(m: M, more: Record<string, string> = {}) =>
          Metric.withAttributes(m, { service, ...more }) as M
        let last: StatsSnapshot | undefined
        const discoveryHistogram = tagged(discoverySeconds)

        const publish = Effect.gen(function*() {
          const now = yield* stats.snapshot
          const before = last
          last = now
          const grew = (a: number, b: number | undefined) => a - (b ?? 0)
          for (const [protocol, c] of Object.entries(now.byProtocol)) {
            const was = before?.byProtocol[protocol]
            yield* Metric.update(tagged(frames, { direction: "in", protocol }), grew(c.in, was?.in))
            yield* Metric.update(tagged(frames, { direction: "out", protocol }), grew(c.out, was?.out))
          }
          yield* Metric.update(tagged(bytesIn), grew(now.bytesIn, before?.bytesIn))
          yield* Metric.update(tagged(bytesOut), grew(now.bytesOut, before?.bytesOut))
          for (const [op, c] of Object.entries(now.byOp)) {
            const was = before?.byOp[op]
            yield* Metric.update(tagged(messages, { direction: "in", op }), grew(c.in, was?.in))
            yield* Metric.update(tagged(messages, { direction: "out", op }), grew(c.out, was?.out))
          }
          for (const [reason, n] of Object.entries(now.drops)) {
            yield* Metric.update(tagged(drops, { reason }), grew(n ?? 0, before?.drops[reason as keyof typeof now.drops]))
          }
          yield* Metric.update(tagged(sendFailures), grew(now.sendFailures, before?.sendFailures))
          yield* Metric.update(tagged(fallbacks), grew(now.fallbacks, before?.fallbacks))
          yield* Metric.update(tagged(members), (yield* registry.list).length)
          for (const seconds of registry.takeDiscovered()) yield* Metric.update(discoveryHistogram, seconds)
        })
        // Exporters read every 10 s or more; an idle member should cost next to nothing.
        yield* Effect.sleep("10 seconds").pipe(Effect.andThen(publish), Effect.forever, Effect.forkScoped)

        // Effect's Prometheus formatter over this member's series alone (other
        // members of the process, and the program's own metrics, are theirs).
        // Loaded on the first read: it brings Effect's http modules along.
        const prometheus = Effect.gen(function*() {
          yield* publish
          const { formatUnsafe } = yield* Effect.promise(() => import("effect/observability/PrometheusMetrics"))
          const context = yield* Effect.context<never>()
          const own: Metric.MetricRegistry = new Map()
          for (const [key, m] of Context.get(context, Metric.MetricRegistry)) {
            if (m.id.startsWith("cluster_comm_") && m.attributes?.service === service) own.set(key, m)
          }
          return formatUnsafe(Context.add(context, Metric.MetricRegistry, own))
        })

        if (options.port !== undefined) yield* serveMetrics(options.port, prometheus)

        // The query histogram's attributes are put in a context once: an
        // attributed metric copies the fiber's whole context at every update.
        const context = yield* Effect.context<never>()
        const queryContext = Context.add(context, Metric.CurrentMetricAttributes, {
          ...Context.get(context, Metric.CurrentMetricAttributes),
          service
        })
        return Telemetry.of({
          publish,
          prometheus,
          queried: (seconds) => querySeconds.updateUnsafe(seconds, queryContext)
        })
      })
    )
}

/**
 * Serves `text` at GET /metrics on a loopback port (metrics are for this
 * host's collector, not the network), with Effect's http router on Node's
 * server, loaded only when asked for: most members never serve metrics.
 */
const serveMetrics = (port: number, text: Effect.Effect<string>): Effect.Effect<void, JoinError, Scope.Scope> =>
  Effect.gen(function*() {
    const [http, HttpRouter, HttpServerResponse, NodeHttpServer] = yield* Effect.promise(() =>
      Promise.all([
        import("node:http"),
        import("effect/http/HttpRouter"),
        import("effect/http/HttpServerResponse"),
        import("@effect/platform-node/NodeHttpServer")
      ])
    )
    const route = HttpRouter.add("GET", "/metrics", Effect.map(text, (body) =>
      HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" })))
    const server = HttpRouter.serve(route, { disableLogger: true, disableListenLog: true }).pipe(
      Layer.provide(NodeHttpServer.layer(() => http.createServer(), { port, host: "127.0.0.1" }))
    )
    yield* Layer.build(server).pipe(
      Effect.mapError((e) =>
        new JoinError({ reason: "AddressInUse", field: "metricsPort", message: `cannot serve metrics on port ${port}: ${e.message}`, cause: e }))
    )
  })
