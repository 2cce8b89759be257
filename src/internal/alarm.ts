/**
 * One timer for many deadlines (expiries, query timeouts): a fiber runs a
 * pass, which handles what is due and says when the next thing falls due,
 * and sleeps until then on the member's clock. Nothing is armed or cleared
 * per deadline; a deadline earlier than the planned wake-up wakes it at once.
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
 * Starts the alarm's fiber in the current scope. `pass(now, late)` returns the
 * time of the next deadline, or Infinity when there is none (then only
 * `wakeBy` wakes it); `late` is how long after its planned time the timer woke
 * the pass (0 when woken early or on time). Passes are at least `minMillis` apart.
 */
export const makeAlarm = (
  pass: (now: number, late: number) => Effect.Effect<number>,
  minMillis: number
): Effect.Effect<Alarm, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    // A deadline added while a pass runs may come after its scan: it wakes the alarm too.
    let passing = true
    let nextPass = Infinity
    let nudge = Deferred.makeUnsafe<void>()
    let plannedAt = Infinity
    yield* Effect.gen(function*() {
      while (true) {
        passing = true
        const now = clock.currentTimeMillisUnsafe()
        nextPass = yield* pass(now, Math.max(0, now - plannedAt))
        plannedAt = Infinity
        passing = false
        const signal = nudge
        if (nextPass === Infinity) yield* Deferred.await(signal)
        else {
          const wait = Math.max(minMillis, nextPass - clock.currentTimeMillisUnsafe() + 1)
          plannedAt = clock.currentTimeMillisUnsafe() + wait
          yield* Effect.raceFirst(Effect.sleep(Duration.millis(wait)), Deferred.await(signal))
        }
        // Woken by a nudge, the pass is not late whatever the time.
        if (Deferred.isDoneUnsafe(signal)) {
          nudge = Deferred.makeUnsafe<void>()
          plannedAt = Infinity
        }
      }
    }).pipe(Effect.forkScoped)
    return {
      wakeBy: (at) => {
        if (passing || at < nextPass) Deferred.doneUnsafe(nudge, Effect.void)
      }
    }
  })
