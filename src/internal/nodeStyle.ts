/**
 * What a plain Node.js program sees of the Promise bundle's functions and
 * classes. Each carries the name it is exported by: the bundle is minified, so
 * `JoinError.name` would otherwise be a letter or two, and Node would print
 * an error as `ye [JoinError]: ...`. Errors print as Node prints its own:
 * name, message and stack, then the fields. Effect prints an error as its
 * data alone, which is its convention, not a Node program's.
 */
import type { inspect as Inspect, InspectOptions } from "node:util"

const custom = Symbol.for("nodejs.util.inspect.custom")

function asNodeError(this: Error, depth: number | null, options: InspectOptions, inspect: typeof Inspect): string {
  return inspect(this, { ...options, depth, customInspect: false })
}

/** Names each function and class among a module's exports as exported, and has its errors print as Node errors. */
export const nodeStyle = (api: object): void => {
  for (const [name, c] of Object.entries(api)) {
    if (typeof c !== "function") continue
    Object.defineProperty(c, "name", { value: name, configurable: true })
    if (c.prototype instanceof Error) Object.defineProperty(c.prototype, custom, { value: asNodeError, configurable: true, writable: true })
  }
}
