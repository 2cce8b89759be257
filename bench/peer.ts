/**
 * Bench peer over cluster-comm, one role a process (driven over IPC):
 *   sink    counts "T" messages and says when `count` arrived
 *   source  sendTo the sink `count` times, `size` bytes each
 *   echo    answers every "P" with a "Q" carrying the same data
 *   pinger  sends "P" to the echo and waits for each "Q": round-trip times
 *   responder  answers queries "R" with the data they carry
 *   asker      queries the responder, one query at a time: round-trip times
 */
import { Deferred, Effect, Schedule, Stream } from "effect"
import { Cluster, ClusterLive, HookPoint } from "cluster-comm"
import { perOperation, sampleAllocations, sampleOnRequest } from "./alloc.ts"

const [role = "sink", port = "23901"] = process.argv.slice(2)
const peerOf: Record<string, string> = { source: "sink", pinger: "echo", asker: "responder" }

/** `warmup`: round trips made first and not timed (the JIT's warm-up), then `count` timed. */
type Go = { readonly count: number; readonly size: number; readonly warmup?: number }
const nextGo = () => new Promise<Go>((resolve) => process.once("message", (m) => resolve(m as Go)))

const waitFor = (name: string) =>
  Cluster.resolve(name).pipe(
    Effect.repeat({ schedule: Schedule.spaced("2 millis"), until: (s) => s.length > 0 }),
    Effect.timeout("10 seconds"),
    Effect.map((s) => s[0]!)
  )

const main = Effect.gen(function*() {
  if (role === "sink") {
    process.send?.({ ready: true })
    const go = yield* Effect.promise(nextGo)
    let seen = 0
    // Messages arrive in chunks (as many as were waiting): count a chunk at a time.
    yield* Cluster.messages.pipe(
      Stream.runForEachArray((chunk) =>
        Effect.sync(() => {
          for (const m of chunk) if (m.op === "T" && ++seen === go.count) process.send?.({ done: true })
        })
      ),
      Effect.forkChild
    )
    process.send?.({ subscribed: true })
    return yield* Effect.never
  }
  if (role === "responder") {
    let answered = 0
    yield* Cluster.hook(HookPoint.query("R"), (m) => {
      answered++
      return Effect.succeed(m.data)
    })
    // Sampled while the asker runs its timed trips (it says when), per query answered.
    if (process.env.BENCH_ALLOC) sampleOnRequest(() => answered)
    process.send?.({ ready: true })
    return yield* Effect.never
  }
  if (role === "echo") {
    let answered = 0
    yield* Cluster.hook(HookPoint.op("P", "receive"), (m) => {
      answered++
      return Cluster.sendTo(m.from, "Q", m.data).pipe(Effect.as(m))
    })
    if (process.env.BENCH_ALLOC) sampleOnRequest(() => answered)
    process.send?.({ ready: true })
    return yield* Effect.never
  }
  const target = yield* waitFor(peerOf[role]!)
  process.send?.({ ready: true })
  const go = yield* Effect.promise(nextGo)
  const data = new Uint8Array(go.size).fill(97)
  if (role === "source") {
    if ((go as { all?: boolean }).all) {
      // The streaming form: a thousand messages a call.
      const chunk = Array.from({ length: 1000 }, () => data)
      for (let i = 0; i < go.count; i += chunk.length) yield* Cluster.sendAll(target, "T", chunk)
    } else {
      for (let i = 0; i < go.count; i++) yield* Cluster.sendTo(target, "T", data)
    }
    process.send?.({ sent: true })
    return yield* Effect.never
  }
  const times: Array<number> = []
  // The first thousand warm-up trips are kept too: the cold figure.
  const cold: Array<number> = []
  const warmup = go.warmup ?? 0
  const timed = (i: number, t: number) => {
    if (i >= warmup) times.push(performance.now() - t)
    else if (i < 1000) cold.push(performance.now() - t)
  }
  // BENCH_ALLOC: allocations sampled over the timed trips (`sample` at the first), reported a trip.
  let stop: (() => Promise<{ total: number; top: Array<[string, number]> }>) | undefined
  const sample = process.env.BENCH_ALLOC ? Effect.promise(async () => void (stop = await sampleAllocations())) : Effect.void
  const report = Effect.promise(async () => {
    const alloc = stop === undefined ? undefined : perOperation(await stop(), go.count)
    process.send?.({ times, cold, ...(alloc ? { alloc } : {}) })
  })
  if (role === "asker") {
    for (let i = 0; i < warmup + go.count; i++) {
      if (i === warmup) yield* sample
      const t = performance.now()
      const result = yield* Cluster.queryAll({ target, op: "R", data })
      if (result.responses.size !== 1) return yield* Effect.die(new Error("no response"))
      timed(i, t)
    }
    yield* report
    return yield* Effect.never
  }
  // pinger
  let pending = yield* Deferred.make<void>()
  yield* Cluster.hook(HookPoint.op("Q", "receive"), (m) => Deferred.succeed(pending, undefined).pipe(Effect.as(m)))
  for (let i = 0; i < warmup + go.count; i++) {
    if (i === warmup) yield* sample
    pending = yield* Deferred.make<void>()
    const t = performance.now()
    yield* Cluster.sendTo(target, "P", data)
    yield* Deferred.await(pending)
    timed(i, t)
  }
  yield* report
  return yield* Effect.never
})

Effect.runFork(Effect.scoped(main).pipe(Effect.provide(ClusterLive({ name: role, port: Number(port), bufferSize: Number(process.env.BENCH_BUFFER ?? 4096) }))))
process.on("SIGTERM", () => process.exit(0))
