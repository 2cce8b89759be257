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
  /** Records a query's duration. */
  readonly queried: (seconds: number) => Effect.Effect<void>
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

        const prometheus = Effect.gen(function*() {
          yield* publish
          const lines: Array<string> = []
          const seen = new Set<string>()
          for (const m of yield* Metric.snapshot) {
            if (!m.id.startsWith("cluster_comm_") || m.attributes?.service !== service) continue
            if (!seen.has(m.id)) {
              seen.add(m.id)
              lines.push(`# HELP ${m.id} ${m.description ?? m.id}`)
              lines.push(`# TYPE ${m.id} ${m.type === "Counter" ? "counter" : m.type === "Gauge" ? "gauge" : "histogram"}`)
            }
            const labels = (extra: Record<string, string> = {}) => {
              const all = { ...m.attributes, ...extra } as Record<string, string>
              return `{${Object.entries(all).map(([k, v]) => `${k}="${String(v).replace(/["\\\n]/g, "_")}"`).join(",")}}`
            }
            if (m.type === "Counter") lines.push(`${m.id}${labels()} ${m.state.count}`)
            else if (m.type === "Gauge") lines.push(`${m.id}${labels()} ${m.state.value}`)
            else if (m.type === "Histogram") {
              for (const [bound, count] of m.state.buckets) lines.push(`${m.id}_bucket${labels({ le: String(bound) })} ${count}`)
              lines.push(`${m.id}_bucket${labels({ le: "+Inf" })} ${m.state.count}`)
              lines.push(`${m.id}_sum${labels()} ${m.state.sum}`)
              lines.push(`${m.id}_count${labels()} ${m.state.count}`)
            }
          }
          return `${lines.join("\n")}\n`
        })

        if (options.port !== undefined) {
          const port = options.port
          // Loaded only when asked for: most members never serve metrics.
          const http = yield* Effect.promise(() => import("node:http"))
          const services = yield* Effect.context<never>()
          const server = http.createServer((req, res) => {
            if (req.url !== "/metrics") {
              res.writeHead(404).end()
              return
            }
            Effect.runPromiseWith(services)(prometheus).then(
              (text) => res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }).end(text),
              () => res.writeHead(500).end()
            )
          })
          yield* Effect.acquireRelease(
            Effect.callback<void, JoinError>((resume) => {
              server.once("error", (e) =>
                resume(Effect.fail(new JoinError({ reason: "AddressInUse", field: "metricsPort", message: `cannot serve metrics on port ${port}: ${e.message}`, cause: e }))))
              // Loopback only: metrics are for this host's collector, not the network.
              server.listen(port, "127.0.0.1", () => resume(Effect.void))
            }),
            () => Effect.callback<void>((resume) => void server.close(() => resume(Effect.void)))
          )
        }

        // Tagged once: a query's hot path must not build a metric key each time.
        const queryHistogram = tagged(querySeconds)
        return Telemetry.of({
          publish,
          prometheus,
          queried: (seconds) => Metric.update(queryHistogram, seconds)
        })
      })
    )
}
