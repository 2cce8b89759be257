/**
 * Bench scale host: runs `count` members in this one process, each a full
 * member on its own real sockets (multicast group, udp, tcp), and answers
 * the bench over IPC:
 *   converged  when every member here knows all `expect` others
 *   sample     this process's CPU time, heap (after a GC) and rss, and the
 *              fewest services any member here knows right now
 * Several hosts make the N of the scale curve (processes x members each).
 */
import { writeFileSync } from "node:fs"
import { Session } from "node:inspector"
import { Effect } from "effect"
import { Cluster, ClusterLive } from "cluster-comm"
import { knowsOthers } from "./knows.ts"
import { sampleFields, sampleStart } from "./sample.ts"

const [prefix = "s", count = "10", expect = "9", port = "23960", heartbeat = "1000"] = process.argv.slice(2)
const beat = Number(heartbeat)
const clusters: Array<Cluster["Service"]> = []
let converged = 0

const member = (name: string) =>
  Effect.gen(function*() {
    clusters.push(yield* Cluster)
    yield* knowsOthers(Number(expect))
    if (++converged === Number(count)) process.send?.({ converged: true, at: Date.now() })
    return yield* Effect.never
  }).pipe(
    // ttl of five heartbeats: a loaded host still keeps everyone (the bench counts whoever it lost).
    Effect.provide(ClusterLive({ name, port: Number(port), heartbeat: `${beat} millis`, ttl: `${5 * beat} millis` }))
  )

const started = Date.now()
for (let i = 0; i < Number(count); i++) Effect.runFork(member(`${prefix}-${i}`))
process.send?.({ started: true, at: started })

// SCALE_PROFILE=file: a CPU profile of the steady state, between the two samples.
const profiler = process.env.SCALE_PROFILE === undefined ? undefined : new Session()
let sampled = 0
process.on("message", (m: { sample?: boolean }) => {
  if (!m.sample) return
  if (profiler !== undefined && sampled++ === 0) {
    profiler.connect()
    profiler.post("Profiler.enable", () => profiler.post("Profiler.start"))
  } else if (profiler !== undefined) {
    profiler.post("Profiler.stop", (_, { profile }) => writeFileSync(`${process.env.SCALE_PROFILE}-${prefix}.cpuprofile`, JSON.stringify(profile)))
  }
  // The GC and the reading below are the bench's own work: the CPU between
  // two samples is counted from the end of one to the start of the next.
  const start = sampleStart()
  // Frames counted here and again after the sample's own work: the window
  // between two samples runs from the end of one to the start of the next.
  const framesInAt = clusters.reduce((n, c) => n + Effect.runSync(c.stats).framesIn, 0)
  Promise.all(clusters.map((c) => Effect.runPromise(Effect.all([c.services, c.stats])))).then((lists) => {
    process.send?.({
      ...sampleFields(start),
      fewestKnown: Math.min(...lists.map(([l]) => l.length)),
      framesInAt,
      framesIn: lists.reduce((n, [, s]) => n + s.framesIn, 0),
      framesOut: lists.reduce((n, [, s]) => n + s.framesOut, 0),
      drops: lists.reduce((n, [, s]) => n + Object.values(s.drops).reduce((a, b) => a + (b ?? 0), 0), 0),
      dropsByReason: lists.reduce((by: Record<string, number>, [, s]) => {
        for (const [k, v] of Object.entries(s.drops)) by[k] = (by[k] ?? 0) + (v ?? 0)
        return by
      }, {})
    })
  })
})
process.on("SIGTERM", () => process.exit(0))
process.on("SIGINT", () => process.exit(0))
