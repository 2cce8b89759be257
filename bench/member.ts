/**
 * Bench discovery member: joins, then reports (over IPC) when it knows the
 * `expect` other members, with timestamps of its boot, join and that moment,
 * and its CPU time so far. `npm run bench` runs it bundled (dist/bench), as a
 * deployed member would start: one file, Node's compile cache on.
 */
import * as Effect from "effect/Effect"
import { ClusterLive } from "cluster-comm"
import { knowsOthers } from "./knows.ts"

const [name = "m", expect = "1", port = "23900"] = process.argv.slice(2)
const bootedAt = performance.timeOrigin
const joinStartedAt = Date.now()

const main = Effect.gen(function*() {
  // The layer is built (sockets open, first heartbeat and probe out) when this runs.
  const joinedAt = Date.now()
  yield* knowsOthers(Number(expect)).pipe(Effect.timeout("20 seconds"))
  process.send?.({ name, bootedAt, joinStartedAt, joinedAt, knowsAllAt: Date.now(), cpu: process.cpuUsage() })
  yield* Effect.never
})

Effect.runFork(
  main.pipe(Effect.provide(ClusterLive({ name, port: Number(port), heartbeat: "1 second", ttl: "5 seconds" })))
)
process.on("SIGTERM", () => process.exit(0))
// The idle bench asks for CPU time now and then.
process.on("message", (m) => {
  if (m === "cpu") process.send?.({ cpuNow: process.cpuUsage(), at: performance.now() })
})
