/**
 * Bench peer over the Promise API (`cluster-comm/promise`, the one bundled
 * file a plain Node.js program loads), with peer.ts's query roles:
 *   responder  answers queries "R" with the data they carry (a plain function)
 *   asker      queries the responder, one query at a time: round-trip times
 */
import { HookPoint, join } from "cluster-comm/promise"
import { perOperation, sampleAllocations, sampleOnRequest } from "./alloc.ts"

const [role = "responder", port = "23901"] = process.argv.slice(2)
type Go = { readonly count: number; readonly size: number; readonly warmup?: number }

const member = await join({ name: `promise-${role}`, port: Number(port), bufferSize: 4096 }, { leaveOnSignals: false })
process.on("SIGTERM", () => process.exit(0))
/** Which file `cluster-comm/promise` is here: the bench checks that it is the shipped bundle. */
const entry = import.meta.resolve("cluster-comm/promise")

if (role === "responder") {
  let answered = 0
  member.hook(HookPoint.query("R"), (q) => {
    answered++
    return q.data
  })
  // BENCH_ALLOC: sampled while the asker runs its timed trips (it says when), per query answered.
  if (process.env.BENCH_ALLOC) sampleOnRequest(() => answered)
  process.send?.({ ready: true, entry })
} else {
  let target = member.resolve("promise-responder")[0]
  for (let waited = 0; target === undefined && waited < 10_000; waited += 2) {
    await new Promise((r) => setTimeout(r, 2))
    target = member.resolve("promise-responder")[0]
  }
  if (target === undefined) throw new Error("no responder")
  process.send?.({ ready: true, entry })
  const go = await new Promise<Go>((resolve) => process.once("message", (m) => resolve(m as Go)))
  const data = new Uint8Array(go.size).fill(97)
  const warmup = go.warmup ?? 0
  const times: Array<number> = []
  const cold: Array<number> = []
  let stop: Awaited<ReturnType<typeof sampleAllocations>> | undefined
  for (let i = 0; i < warmup + go.count; i++) {
    if (i === warmup && process.env.BENCH_ALLOC) stop = await sampleAllocations()
    const t = performance.now()
    const result = await member.queryAll({ target, op: "R", data })
    if (result.responses.size !== 1) throw new Error("no response")
    if (i >= warmup) times.push(performance.now() - t)
    else if (i < 1000) cold.push(performance.now() - t)
  }
  const alloc = stop === undefined ? undefined : perOperation(await stop(), go.count)
  process.send?.({ times, cold, ...(alloc ? { alloc } : {}) })
}
