/**
 * Allocation per operation, for the bench's peers (`BENCH_ALLOC=1`): V8's
 * sampling heap profiler with the objects the young and old collections
 * freed counted too, so it measures what was allocated, not what survived.
 */
import { Session } from "node:inspector/promises"

interface Node {
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly selfSize: number
  readonly children: ReadonlyArray<Node>
}

export const sampleAllocations = async () => {
  const session = new Session()
  session.connect()
  await session.post("HeapProfiler.startSampling", {
    samplingInterval: 256,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true
  })
  /** Stops: the bytes allocated meanwhile, and the sites that allocated most. */
  return async () => {
    const { profile } = await session.post("HeapProfiler.stopSampling") as { profile: { head: Node } }
    session.disconnect()
    const sites = new Map<string, number>()
    let total = 0
    const walk = (n: Node) => {
      total += n.selfSize
      if (n.selfSize > 0) {
        const key = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}:${n.callFrame.lineNumber}`
        sites.set(key, (sites.get(key) ?? 0) + n.selfSize)
      }
      for (const c of n.children) walk(c)
    }
    walk(profile.head)
    return { total, top: [...sites].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.BENCH_ALLOC_TOP ?? 12)) }
  }
}
