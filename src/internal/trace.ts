/**
 * Spans on the per-message paths (hooks, sendTo, query). A span costs a few
 * microseconds, more than the rest of a small message's handling, and Effect's
 * native tracer keeps spans in memory and exports them nowhere; so they are
 * made only when a tracing backend is installed (Effect's own advice: compare
 * the active tracer with `Tracer.nativeTracer`).
 */
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Tracer from "effect/Tracer"

export const traced = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  name: string,
  attributes: Record<string, unknown>
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => tracing(fiber) ? spanned(effect, name, attributes) : effect)

/** The span itself, for a caller that checked `tracing` (and builds its attributes only then). */
export const spanned = <A, E, R>(effect: Effect.Effect<A, E, R>, name: string, attributes: Record<string, unknown>): Effect.Effect<A, E, R> =>
  Effect.withSpan(effect, name, { attributes, captureStackTrace: false })

/** Whether this fiber's spans go anywhere. */
export const tracing = (fiber: Fiber.Fiber<unknown, unknown>): boolean => fiber.getRef(Tracer.Tracer) !== Tracer.nativeTracer
