/**
 * One timer for many deadlines (expiries, query timeouts): a fiber runs a
 * pass, which handles what is due and says when the next thing falls due,
 * and sleeps until then on the member's clock. Nothing is armed or cleared
 * per deadline; a deadline earlier than the planned wake-up wakes it at once.
 *
 * A pass woken late (a handler kept the event loop busy, a long pause) first
 * lets the input that waited meanwhile be read, then runs: a beat or a reply
 * sitting in a socket is not blamed on the network for the member's own absence.
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

export interface Alarm {
  /** A deadline at `at` (the clock's milliseconds) was added: a pass runs by then. */
  readonly wakeBy: (at: number) => void
}

/**
 * Starts the alarm's fiber in the current scope. `pass(now)` returns the time
 * of the next deadline, or Infinity when there is none (then only `wakeBy`
 * wakes it). Passes are at least `minMillis` apart.
 */
export const makeAlarm = (pass: (now: number) => Effect.Effect<number>, minMillis: number): Effect.Effect<Alarm, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    // A deadline added while a pass runs may come after its scan: it wakes the alarm too.
    let passing = true
    let nextPass = Infinity
    let nudge = Deferred.makeUnsafe<void>()
    yield* Effect.gen(function*() {
      while (true) {
        passing = true
        nextPass = yield* pass(clock.currentTimeMillisUnsafe())
        passing = false
        const signal = nudge
        if (nextPass === Infinity) yield* Deferred.await(signal)
        else {
          const now = clock.currentTimeMillisUnsafe()
          const wait = Math.max(minMillis, nextPass - now + 1)
          const wakeAt = now + wait
          yield* Effect.raceFirst(Effect.sleep(Duration.millis(wait)), Deferred.await(signal))
          // The timer woke us late: let the event loop poll for input first (a
          // timer set now fires after its next poll), so what waited in the sockets counts.
          if (!Deferred.isDoneUnsafe(signal) && clock.currentTimeMillisUnsafe() - wakeAt > LATE_MILLIS) {
            yield* Effect.sleep(Duration.millis(1))
          }
        }
        if (Deferred.isDoneUnsafe(signal)) nudge = Deferred.makeUnsafe<void>()
      }
    }).pipe(Effect.forkScoped)
    return {
      wakeBy: (at) => {
        if (passing || at < nextPass) Deferred.doneUnsafe(nudge, Effect.void)
      }
    }
  })

/** Later than this past its planned time, a pass looks at waiting input first (timers fire 1-2 ms late as a rule). */
const LATE_MILLIS = 5
