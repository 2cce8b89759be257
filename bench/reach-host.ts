/**
 * Bench reach host: `count` members in this process, on Redis (multicast off,
 * loopback addresses) or on multicast, answering the bench over IPC:
 *   started / converged  when it began, and when every member here knows `expect` others
 *   sample               CPU time, heap (after a GC), rss, the fewest services any member knows
 *   watch <name>         when every member here has found the service `name` (the latest time)
 *   watchLost <name>     when every member here has lost it
 * Found and lost times are kept only for names starting "x-" (the bench's joiner and victim).
 */
import { Effect, Stream } from "effect"
import { Cluster, type ClusterConfigInput, ClusterLive } from "cluster-comm"
import { knowsOthers } from "./knows.ts"
import { sampleFields, sampleStart } from "./sample.ts"

const [prefix = "r", count = "10", expect = "9", port = "23970", heartbeat = "1000", mode = "redis", redisUrl = ""] = process.argv.slice(2)
const beat = Number(heartbeat)
const clusters: Array<Cluster["Service"]> = []
const found = new Map<string, Array<number>>()
const lost = new Map<string, Array<number>>()
let converged = 0

const config = (name: string): ClusterConfigInput =>
  mode === "redis"
    ? { name, port: Number(port), heartbeat: beat, multicast: false, advertise: "127.0.0.1", redis: redisUrl }
    : { name, port: Number(port), heartbeat: beat, ttl: 3 * beat }

const member = (name: string) =>
  Effect.gen(function*() {
    const cluster = yield* Cluster
    clusters.push(cluster)
    yield* cluster.events.pipe(
      Stream.runForEach((e) =>
        Effect.sync(() => {
          if (!e.service.name.startsWith("x-")) return
          const into = e._tag === "ServiceFound" ? found : e._tag === "ServiceLost" ? lost : undefined
          if (into === undefined) return
          const times = into.get(e.service.name) ?? []
          times.push(Date.now())
          into.set(e.service.name, times)
        })
      ),
      Effect.forkChild
    )
    yield* knowsOthers(Number(expect))
    if (++converged === Number(count)) process.send?.({ converged: true, at: Date.now() })
    return yield* Effect.never
  }).pipe(Effect.provide(ClusterLive(config(name))))

const started = Date.now()
for (let i = 0; i < Number(count); i++) Effect.runFork(member(`${prefix}-${i}`))
process.send?.({ started: true, at: started })

/** Resolves when every member here has an entry for `name` in `times`: the latest. */
const whenAll = (times: Map<string, Array<number>>, name: string, reply: (at: number) => void) => {
  const check = () => {
    const t = times.get(name) ?? []
    if (t.length >= Number(count)) return reply(Math.max(...t))
    setTimeout(check, 5)
  }
  check()
}

process.on("message", (m: { sample?: boolean; watch?: string; watchLost?: string }) => {
  if (m.watch !== undefined) return whenAll(found, m.watch, (at) => process.send?.({ seen: m.watch, at }))
  if (m.watchLost !== undefined) return whenAll(lost, m.watchLost, (at) => process.send?.({ lostAll: m.watchLost, at }))
  if (!m.sample) return
  const start = sampleStart()
  Promise.all(clusters.map((c) => Effect.runPromise(c.services))).then((lists) => {
    process.send?.({
      ...sampleFields(start),
      fewestKnown: Math.min(...lists.map((l) => l.length))
    })
  })
})
process.on("SIGTERM", () => process.exit(0))
process.on("SIGINT", () => process.exit(0))
