/**
 * Work for the end of the current tick, after the code running now (a
 * socket's callback and what it called) returns.
 */

const settled = Promise.resolve()

/**
 * Runs `f` as a microtask: a reaction to one settled promise. Node's
 * `queueMicrotask` builds an async resource and a bound function for each
 * call, a cost the round trip pays on both sides; `f` must not throw.
 */
export const atTickEnd = (f: () => void): void => {
  settled.then(f)
}
