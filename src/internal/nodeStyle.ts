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
import type * as ManagedRuntime from "effect/ManagedRuntime"

/**
 * Runs `effect` to a Promise; with a signal, until done or until it aborts,
 * then rejects with its reason (an already aborted one, before anything is done).
 */
export const runAbortable = <A, R>(
  runtime: ManagedRuntime.ManagedRuntime<R, never>,
  effect: Effect.Effect<A, never, R>,
  signal: AbortSignal | undefined
): Promise<A> => {
  if (signal === undefined) return runtime.runPromise(effect)
  if (signal.aborted) return Promise.reject(signal.reason)
  return runtime.runPromiseExit(effect, { signal }).then((exit) => {
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

/** Node's key for how a value prints (`util.inspect.custom`), without loading `node:util`. */
export const inspectCustom = Symbol.for("nodejs.util.inspect.custom")

function asNodeError(this: Error, depth: number | null, options: InspectOptions, inspect: typeof Inspect): string {
  return inspect(this, { ...options, depth, customInspect: false })
}

/** Names each function and class among a module's exports as exported, and has its errors print as Node errors. */
export const nodeStyle = (api: object): void => {
  for (const [name, c] of Object.entries(api)) {
    if (typeof c !== "function") continue
    Object.defineProperty(c, "name", { value: name, configurable: true })
    if (c.prototype instanceof Error) Object.defineProperty(c.prototype, inspectCustom, { value: asNodeError, configurable: true, writable: true })
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
