/**
 * What a child process prints, line by line, and a bounded wait for a line:
 * the test peers (agents, Tcl members) share it.
 */
import type { Readable } from "node:stream"
import { Effect } from "effect"

export const collectLines = <L>(streams: ReadonlyArray<Readable>, parse: (line: string) => L, describe: () => string) => {
  const lines: Array<L> = []
  const listeners = new Set<() => void>()
  for (const stream of streams) {
    let buffered = ""
    stream.on("data", (c: Buffer) => {
      buffered += c.toString()
      let nl: number
      while ((nl = buffered.indexOf("\n")) >= 0) {
        lines.push(parse(buffered.slice(0, nl)))
        buffered = buffered.slice(nl + 1)
        for (const l of listeners) l()
      }
    })
  }
  /** Waits (bounded) for a line matching `match`; fails naming what came instead. */
  const waitFor = (match: (line: L) => boolean, within = 5000) =>
    Effect.callback<L, Error>((resume) => {
      const check = () => {
        const found = lines.find(match)
        if (found === undefined) return false
        listeners.delete(check)
        clearTimeout(timer)
        resume(Effect.succeed(found))
        return true
      }
      const timer = setTimeout(() => {
        listeners.delete(check)
        resume(Effect.fail(new Error(`${describe()}: no matching line within ${within} ms; got:\n${lines.map((l) => typeof l === "string" ? l : JSON.stringify(l)).join("\n")}`)))
      }, within)
      if (!check()) listeners.add(check)
    })
  return { lines, waitFor }
}
