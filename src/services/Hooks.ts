/**
 * Hook points: user functions that see, change or cancel what passes. Each
 * point holds an ordered list of hooks; each hook gets the previous one's
 * result. A hook that fails with anything but `HookRejected`, or dies, is
 * logged and counts as a rejection: it never takes the member down.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { boundedMemo } from "../internal/memo.ts"
import { spanned, tracing } from "../internal/trace.ts"
import { HookRejected } from "../schema/Errors.ts"
import type { Message, Outgoing, ProtocolName, Service } from "../schema/Service.ts"

/** What a hook may not hand back: nothing (it is refused, as "hook returned no value"). */
const refused = (value: unknown): boolean => value === undefined || value === null

/**
 * A named place in the send, receive or membership pipeline; `A` is what its
 * hooks see and `B` what they return (the same, but for query points, whose
 * hooks return the response).
 */
export interface HookPoint<A, B = A> {
  readonly key: string
  /** Message points: the direction they see (lets the hot path ask "any send hooks?"). */
  readonly direction?: Direction
  /** Query points: the hook's value is the response to send back. */
  readonly responds?: true
  /** Phantom: the value types its hooks receive and return. */
  readonly _A?: (a: A) => B
}

export type Direction = "send" | "receive"
type Carried<D extends Direction> = D extends "send" ? Outgoing : Message

const point = <A>(key: string, direction?: Direction): HookPoint<A> => direction === undefined ? { key } : { key, direction }

/** The hook points of the Tcl package, in their order of use (see docs/hooks.md). */
export const HookPoint = {
  /** Every outgoing message, after its op and protocol hooks, before encoding. */
  send: point<Outgoing>("send", "send"),
  /** Every incoming message, after its protocol hook, before its op hook. */
  receive: point<Message>("receive", "receive"),
  /** Messages carried by protocol `p`. */
  protocol: <D extends Direction>(p: ProtocolName, direction: D): HookPoint<Carried<D>> =>
    point(`protocol ${p} ${direction}`, direction),
  /** Messages on channel `n`: runs after the op hook on send, after the protocol hook on receive. */
  channel: <D extends Direction>(n: number, direction: D): HookPoint<Carried<D>> => point(`channel ${n} ${direction}`, direction),
  /** Messages with op `op`. */
  op: <D extends Direction>(op: string, direction: D): HookPoint<Carried<D>> => point(`op ${op} ${direction}`, direction),
  /**
   * Membership: `eval` sees every sender's descriptor first, then `validate`
   * (a known service) or `found` (a new one); `lost` runs when one expires or leaves.
   */
  service: (stage: "eval" | "validate" | "found" | "lost"): HookPoint<Service> => point(`service ${stage}`),
  /**
   * Answers queries with op `op`: the hook sees the query as a Message and its
   * value is the response; its failure goes back as the query's error.
   */
  query: (op: string): HookPoint<Message, string | Uint8Array> => ({ key: `query ${op}`, responds: true })
} as const

/**
 * A hook: return the (possibly changed) value, or fail with `HookRejected` to
 * cancel. Any other failure also cancels, and is logged as a hook bug.
 */
export type Hook<A, E = HookRejected, R = never, B = A> = (value: A) => Effect.Effect<B, E, R>

export class Hooks extends Context.Service<Hooks, {
  /**
   * Adds a hook. It is removed when the caller's scope closes, if the caller
   * runs in one; otherwise it lives as long as the member.
   */
  readonly register: <A>(point: HookPoint<A>, hook: Hook<A, unknown>) => Effect.Effect<void>
  /** Runs a point's hooks in order; the value itself when none are registered. */
  readonly run: <A>(point: HookPoint<A>, value: A) => Effect.Effect<A, HookRejected>
  /**
   * `run` without a fiber while it can, for a caller without spans to make:
   * each hook is called at once, and while each hands back a finished Effect
   * (an `Exit`, as `Effect.succeed` and `Effect.fail` make) its verdict is
   * taken here. From the first hook that hands back work to do (or fails
   * other than by `HookRejected`, which is logged), the rest is an Effect
   * for the caller to run.
   */
  readonly runNow: <A>(point: HookPoint<A>, value: A) => Exit.Exit<A, HookRejected> | Effect.Effect<A, HookRejected>
  /** Whether a point has hooks (lets the hot path skip building an Effect). */
  readonly has: (point: HookPoint<any>) => boolean
  /** Whether any message point of that direction has hooks (else messages take the synchronous path). */
  readonly anyFor: (direction: Direction) => boolean
}>()("cluster-comm/Hooks") {
  static readonly layer = Layer.sync(Hooks, () => {
    const points = new Map<string, Array<Hook<any, unknown>>>()
    // Points with hooks, per message direction.
    const active = { send: 0, receive: 0 }

    // One step per hook: its verdict and its failures are sorted in one match,
    // whose handlers are made once a point (hooks run per message).
    interface Verdict {
      readonly onSuccess: (next: unknown) => Effect.Effect<unknown, HookRejected>
      readonly onFailure: (cause: Cause.Cause<unknown>) => Effect.Effect<never, HookRejected>
    }
    const verdict = (key: string): Verdict => ({
      onSuccess: (next) =>
        refused(next)
          ? Effect.fail(new HookRejected({ point: key, reason: "hook returned no value" }))
          : Effect.succeed(next),
      onFailure: (cause) => {
        // Interruption is not a verdict on the frame: pass it on.
        if (Cause.hasInterrupts(cause)) return Effect.failCause(cause as Cause.Cause<never>)
        const error = Cause.findError(cause)
        if (error._tag === "Success" && error.success instanceof HookRejected) return Effect.fail(error.success)
        return Effect.logWarning(`hook at "${key}" failed; the frame is rejected`, Cause.pretty(cause)).pipe(
          Effect.andThen(Effect.fail(new HookRejected({ point: key, reason: "hook failed", cause: Cause.squash(cause) })))
        )
      }
    })
    // Bounded: points are made from ops, which come from the network.
    const verdictOf = boundedMemo(1024, verdict)
    const guarded = <A>(key: string, hook: Hook<A, unknown>, value: A): Effect.Effect<A, HookRejected> =>
      Effect.matchCauseEffect(Effect.suspend(() => hook(value)), verdictOf(key)) as Effect.Effect<A, HookRejected>
    /** `effect`, then the hooks of `chain` from `from` on, each given the value the one before it returned. */
    const andRest = (key: string, chain: ReadonlyArray<Hook<any, unknown>>, from: number, effect: Effect.Effect<unknown, HookRejected>) => {
      for (let i = from; i < chain.length; i++) effect = Effect.flatMap(effect, (v) => guarded(key, chain[i]!, v))
      return effect
    }

    return Hooks.of({
      register: (p, hook) =>
        Effect.serviceOption(Scope.Scope).pipe(
          Effect.flatMap((scope) => {
            const list = points.get(p.key) ?? []
            list.push(hook)
            if (list.length === 1 && p.direction !== undefined) active[p.direction]++
            points.set(p.key, list)
            const remove = Effect.sync(() => {
              const list = points.get(p.key)
              if (list === undefined) return
              const i = list.indexOf(hook)
              if (i >= 0) list.splice(i, 1)
              if (list.length === 0) {
                points.delete(p.key)
                if (p.direction !== undefined) active[p.direction]--
              }
            })
            return Option.isSome(scope) ? Scope.addFinalizer(scope.value, remove) : Effect.void
          })
        ),
      run: <A>(p: HookPoint<A>, value: A) => {
        const list = points.get(p.key)
        if (list === undefined) return Effect.succeed(value)
        // Copy (when there are several): a hook may register or remove hooks while the chain runs.
        const chain = list.length === 1 ? list : list.slice()
        const effect = andRest(p.key, chain, 1, guarded(p.key, chain[0]!, value)) as Effect.Effect<A, HookRejected>
        // Only points with hooks get here: the span costs nothing when none are
        // registered, and its attributes are made only when it is made.
        return Effect.withFiber((fiber) =>
          tracing(fiber)
            ? spanned(effect, "cluster-comm.hook", { point: p.key, hooks: chain.length })
            : effect
        )
      },
      runNow: <A>(p: HookPoint<A>, value: A) => {
        const list = points.get(p.key)
        if (list === undefined) return Exit.succeed(value)
        const chain = list.length === 1 ? list : list.slice()
        const verdict = verdictOf(p.key)
        let current: unknown = value
        // The last hook's own Exit, when it is the answer: handed on, not wrapped again.
        let last: Exit.Exit<unknown> | undefined
        for (let i = 0; i < chain.length; i++) {
          let out: Effect.Effect<unknown, unknown>
          try {
            out = chain[i]!(current)
          } catch (e) {
            out = Effect.die(e)
          }
          if (Exit.isExit(out)) {
            // A value handed back finished is taken as it is (the verdict would wrap it again).
            if (out._tag === "Success" && !refused(out.value)) {
              current = out.value
              last = out as Exit.Exit<unknown>
              continue
            }
            // Otherwise the verdict: a rejection is itself finished; a failure to log is work to do.
            const judged = out._tag === "Success" ? verdict.onSuccess(out.value) : verdict.onFailure(out.cause)
            if (Exit.isExit(judged)) return judged as Exit.Exit<never, HookRejected>
            return andRest(p.key, chain, i + 1, judged) as Effect.Effect<A, HookRejected>
          }
          // Work to do (a hook still running): it and the hooks after it, as `run` has them.
          return andRest(p.key, chain, i + 1, Effect.matchCauseEffect(out, verdict)) as Effect.Effect<A, HookRejected>
        }
        return (last ?? Exit.succeed(current)) as Exit.Exit<A>
      },
      has: (p) => points.has(p.key),
      anyFor: (direction) => active[direction] > 0
    })
  })
}
