/**
 * Allocation per operation, for the bench's peers (`BENCH_ALLOC=1`): V8's
 * sampling heap profiler with the objects the young and old collections
 * freed counted too, so it measures what was allocated, not what survived.
 * Sites in the bench's bundles are named by their source (the bundles' maps).
 */
import { existsSync, readFileSync } from "node:fs"
import { Session } from "node:inspector/promises"
import { SourceMap } from "node:module"
import { fileURLToPath } from "node:url"

interface Node {
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number; readonly columnNumber: number }
  readonly selfSize: number
  readonly children: ReadonlyArray<Node>
}

const maps = new Map<string, SourceMap | undefined>()
/** The function's place in the source when its file has a map beside it, else in the file. */
const siteOf = ({ functionName, url, lineNumber, columnNumber }: Node["callFrame"]) => {
  const name = functionName || "(anonymous)"
  if (!maps.has(url)) {
    const file = url.startsWith("file:") ? fileURLToPath(url) : url
    maps.set(url, existsSync(`${file}.map`) ? new SourceMap(JSON.parse(readFileSync(`${file}.map`, "utf8"))) : undefined)
  }
  const entry = maps.get(url)?.findEntry(lineNumber, columnNumber)
  if (entry !== undefined && "originalSource" in entry) {
    const source = entry.originalSource.replace(/^.*node_modules\//, "").replace(/^(\.\.\/)+/, "")
    return `${name} ${source}:${entry.originalLine + 1}`
  }
  return `${name} ${url.split("/").pop()}:${lineNumber}`
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
    // BENCH_ALLOC_STACK=text: the sites whose name has it are keyed by their callers too.
    const stackOf = process.env.BENCH_ALLOC_STACK
    const walk = (n: Node, path: ReadonlyArray<string>) => {
      total += n.selfSize
      const site = siteOf(n.callFrame)
      if (n.selfSize > 0) {
        const key = stackOf !== undefined && site.includes(stackOf) ? [site, ...path.slice(-5).reverse()].join(" < ") : site
        sites.set(key, (sites.get(key) ?? 0) + n.selfSize)
      }
      for (const c of n.children) walk(c, stackOf === undefined ? path : [...path, site])
    }
    walk(profile.head, [])
    return { total, top: [...sites].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.BENCH_ALLOC_TOP ?? 12)) }
  }
}

/** A sample's bytes and sites for one operation of `n`. */
export const perOperation = ({ total, top }: { total: number; top: Array<[string, number]> }, n: number) => ({
  perTrip: total / n,
  top: top.map(([k, v]): [string, number] => [k, v / n])
})

/**
 * A responder's side of `BENCH_ALLOC`: on `{ alloc: "start" }` it samples
 * until the next message, then sends its allocation per answer (`answered`
 * counts them).
 */
export const sampleOnRequest = (answered: () => number) =>
  process.on("message", async (m: { alloc?: "start" | "stop" }) => {
    if (m.alloc !== "start") return
    const from = answered()
    const stop = await sampleAllocations()
    process.once("message", async () => {
      process.send?.({ alloc: perOperation(await stop(), answered() - from) })
    })
    process.send?.({ sampling: true })
  })
