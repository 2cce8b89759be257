/**
 * One Redis connection, and one subscription a channel, per process for each
 * URL (or `Redis` layer): the members of a process share them, as they share
 * the group socket. Redis then fans each event out to processes, not to every
 * member (a PUBLISH costs Redis in proportion to its subscribers); the
 * members without a key then decode each descriptor once between them (Redis.ts).
 *
 * The link connects in the background and again after a failure, with a
 * capped, jittered back-off; members read `current()` (undefined while it is
 * away) and `generation` (a new connection: events may have been missed).
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type * as Redis from "effect/persistence/Redis"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import * as References from "effect/References"
import * as Scope from "effect/Scope"

export interface RedisLink {
  /** The connected service, or undefined while connecting or away. */
  readonly current: () => Redis.Redis["Service"] | undefined
  /** Moves with every new connection: a member then reads everything again. */
  readonly generation: () => number
  /** Why the link is not up, while it is not. */
  readonly error: () => string | undefined
  /** Whether `channel`'s events arrive now (subscribed on the current connection): beat only then, or events are missed. */
  readonly subscribed: (channel: string) => boolean
  /** Calls `onMessage` with each event on `channel`; returns the function that stops it. */
  readonly listen: (channel: string, onMessage: (message: string) => void) => () => void
  /**
   * Runs `effect` once for all the process's members that ask while it runs
   * (a full read: the same reply serves each), each waiting for its result.
   */
  readonly once: <A, E>(key: string, effect: Effect.Effect<A, E>) => Effect.Effect<A, E>
  /** A member's command says the client is gone (closed): connect afresh. */
  readonly broken: () => void
  /** This member is done with the link; the last one closes it. */
  readonly release: () => void
}

/** Events are handed to the members for at most about this long before the process's other work runs. */
const SLICE_MILLIS = 5

/** The longest wait between attempts to reach a Redis that is away. */
const MAX_BACKOFF_MILLIS = 5000

/** At most this long after Redis is back, a link whose connection it lost is connected again (the back-off's jitter at its top, then a connect). */
export const reconnectBound = (connectTimeoutMillis: number): number => 1.5 * MAX_BACKOFF_MILLIS + connectTimeoutMillis

interface Shared {
  readonly link: RedisLink
  refs: number
}
const links = new Map<unknown, Shared>()

/**
 * The process's link for `key` (a URL, or the layer given), made with
 * `layer` the first time. Each acquire must be released.
 */
export const acquireLink = (
  R: typeof Redis,
  key: unknown,
  layer: Layer.Layer<Redis.Redis, unknown>,
  connectTimeout: Duration.Duration,
  /** Runs the link's fibers with the first member's services (its clock, its logger). */
  run: <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>
): RedisLink => {
  const shared = links.get(key)
  if (shared !== undefined) {
    shared.refs++
    return shared.link
  }
  let current: Redis.Redis["Service"] | undefined
  let generation = 0
  let error: string | undefined = "connecting"
  const listeners = new Map<string, Set<(message: string) => void>>()
  // Channels first listened to while connected, for the connection's fiber to subscribe.
  const newChannels = Effect.runSync(Queue.unbounded<string>())
  let brokenSignal: Deferred.Deferred<void> | undefined

  // Channels with a live subscription on the current connection.
  const active = new Set<string>()
  /** Subscribes (done when Redis confirms), then hands each event to the channel's listeners. */
  const subscribe = (redis: Redis.Redis["Service"], channel: string, scope: Scope.Scope, broken: Deferred.Deferred<void>) =>
    Effect.gen(function*() {
      const events = yield* redis.subscribe(channel).pipe(Effect.provideService(Scope.Scope, scope))
      active.add(channel)
      yield* Effect.gen(function*() {
        while (true) {
          const batch = yield* Queue.takeAll(events)
          let slice = performance.now()
          for (const m of batch) {
            // Members take each event as it is handed to them, without a fiber.
            for (const l of listeners.get(channel) ?? []) l(m.message)
            // A join storm brings thousands: the process's timers (its beats) run between slices.
            if (performance.now() - slice >= SLICE_MILLIS) {
              yield* Effect.yieldNow
              slice = performance.now()
            }
          }
        }
      }).pipe(
        // A subscription that ends (its connection gave up) breaks the link: connect afresh.
        Effect.onExit(() => Deferred.succeed(broken, undefined)),
        Effect.forkIn(scope)
      )
    })

  const supervisor = Effect.gen(function*() {
    let wait = 250
    while (true) {
      yield* Effect.acquireUseRelease(
        Scope.make(),
        (scope) =>
          Effect.gen(function*() {
            const built = yield* Effect.exit(
              Layer.buildWithScope(layer, scope).pipe(
                Effect.timeout(connectTimeout),
                // node-redis logs every socket error; members report the state themselves, once a change.
                Effect.provideService(References.MinimumLogLevel, "Error")
              )
            )
            if (Exit.isFailure(built)) {
              error = describe(R, built.cause)
              return
            }
            const redis = Context.get(built.value, R.Redis)
            const broken = yield* Deferred.make<void>()
            brokenSignal = broken
            yield* Queue.clear(newChannels)
            for (const channel of listeners.keys()) yield* Effect.ignore(subscribe(redis, channel, scope, broken))
            yield* Effect.forkIn(
              Effect.forever(Effect.flatMap(Queue.take(newChannels), (channel) => Effect.ignore(subscribe(redis, channel, scope, broken)))),
              scope
            )
            current = redis
            error = undefined
            generation++
            wait = 250
            yield* Deferred.await(broken)
          }),
        (scope) => {
          current = undefined
          brokenSignal = undefined
          active.clear()
          error ??= "connection lost"
          return Scope.close(scope, Exit.void)
        }
      )
      const jitter = yield* Random.nextBetween(0.5, 1.5)
      yield* Effect.sleep(Duration.millis(wait * jitter))
      wait = Math.min(wait * 2, MAX_BACKOFF_MILLIS)
    }
  })
  const fiber = run(supervisor)
  // Work in flight for all members, by key; run apart from any member, so one leaving does not end it for the rest.
  const flights = new Map<string, { fiber?: Fiber.Fiber<unknown, unknown> }>()

  const link: RedisLink = {
    current: () => current,
    generation: () => generation,
    subscribed: (channel) => active.has(channel),
    error: () => error,
    listen: (channel, onMessage) => {
      let set = listeners.get(channel)
      if (set === undefined) {
        set = new Set()
        listeners.set(channel, set)
        if (current !== undefined) Queue.offerUnsafe(newChannels, channel)
      }
      set.add(onMessage)
      return () => void set.delete(onMessage)
    },
    once: <A, E>(key: string, effect: Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        let flight = flights.get(key)
        if (flight === undefined) {
          const started: { fiber?: Fiber.Fiber<A, E> } = {}
          flights.set(key, started)
          // Set before it runs, and removed only if still its own: it may end at once.
          started.fiber = run(effect.pipe(Effect.ensuring(Effect.sync(() => flights.get(key) === started && flights.delete(key)))))
          flight = started
        }
        return Fiber.join(flight.fiber as Fiber.Fiber<A, E>)
      }),
    broken: () => {
      if (brokenSignal !== undefined) {
        error = "the client closed"
        Deferred.doneUnsafe(brokenSignal, Exit.void)
      }
    },
    release: () => {
      const s = links.get(key)
      if (s === undefined || --s.refs > 0) return
      links.delete(key)
      run(Fiber.interrupt(fiber))
    }
  }
  links.set(key, { link, refs: 1 })
  return link
}

/** Why Redis failed, in one line: the client's own message, not a cause tree. */
export const describe = (R: typeof Redis, cause: Cause.Cause<unknown>): string => {
  const e = Cause.squash(cause)
  const inner = e instanceof R.RedisError ? e.cause : e
  const text = Cause.isTimeoutError(inner) ? "no answer in time" : inner instanceof Error ? inner.message : String(inner)
  return text.split("\n", 1)[0]!.slice(0, 300)
}
