/**
 * Bench discovery member: joins, then reports (over IPC) when it knows the
 * `expect` other members, with timestamps of its boot, join and that moment.
 */
import { Effect, Schedule } from "effect"
import { Cluster, ClusterLive } from "cluster-comm"

const [name = "m", expect = "1", port = "23900"] = process.argv.slice(2)
const bootedAt = performance.timeOrigin

const main = Effect.gen(function*() {
  const joinedAt = Date.now()
  const services = yield* Cluster.services.pipe(
    Effect.repeat({ schedule: Schedule.spaced("1 millis"), until: (s) => s.length >= Number(expect) }),
    Effect.timeout("20 seconds")
  )
  process.send?.({ name, bootedAt, joinStartedAt, joinedAt, knowsAllAt: Date.now(), known: services.length })
  yield* Effect.never
})

const joinStartedAt = Date.now()
Effect.runFork(
  main.pipe(Effect.provide(ClusterLive({ name, port: Number(port), heartbeat: "1 second", ttl: "5 seconds" })))
)
process.on("SIGTERM", () => process.exit(0))
