/**
 * Node's conventions, which a plain Node.js program expects of the Promise
 * API: an `AbortSignal` gives up on a call; what a listener throws is the
 * program's uncaught exception; errors print as Node prints its own (name,
 * message and stack, then the fields; Effect prints an error as its data
 * alone); and the bundle's functions and classes carry the names they are
 * exported by (the bundle is minified: `JoinError.name` would be a letter or
 * two, and Node would print an error as `ye [JoinError]: ...`).
 */
import type { inspect as Inspect, InspectOptions } from "node:util"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"

/**
 * Runs until done or until `signal` aborts, then rejects with its reason.
 * An already aborted signal rejects before anything is done.
 */
export const untilAborted = <A>(signal: AbortSignal, run: (signal: AbortSignal) => Promise<Exit.Exit<A, unknown>>): Promise<A> => {
  if (signal.aborted) return Promise.reject(signal.reason)
  return run(signal).then((exit) => {
    if (Exit.isSuccess(exit)) return exit.value
    throw signal.aborted && Cause.hasInterruptsOnly(exit.cause) ? signal.reason : Cause.squash(exit.cause)
  })
}

/** Fails with the signal's reason once it aborts (at once if it has). */
export const aborted = (signal: AbortSignal): Effect.Effect<never, unknown> =>
  Effect.callback<never, unknown>((resume) => {
    const abort = () => resume(Effect.fail(signal.reason))
    if (signal.aborted) return abort()
    signal.addEventListener("abort", abort, { once: true })
    return Effect.sync(() => signal.removeEventListener("abort", abort))
  })

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

/**
 * Emits as Node's emitters do from I/O: what a listener throws is the
 * program's uncaught exception, and the next event still comes. (Thrown into
 * the pump, it would end the pump: every later event lost, silently.)
 */
export const emitting = <A>(each: (a: A) => void, a: A) => {
  try {
    each(a)
  } catch (e) {
    process.nextTick(() => {
      throw e
    })
  }
}
