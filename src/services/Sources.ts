/**
 * Sources: the state of each discovery source a member runs (multicast,
 * seeds, Redis), for `Cluster.sources`, logs and the registry's `stale` mark.
 * Sources report here; nothing here talks to the network.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import * as Stream from "effect/Stream"
import type { SourceName } from "../schema/Service.ts"
import { Registry } from "./Registry.ts"

/**
 * How a source stands: `up` (working), `connecting` (not yet reached its
 * engine, or reaching it again) or `down` (it failed; `error` says why).
 */
export interface SourceStatus {
  readonly source: SourceName
  readonly state: "up" | "connecting" | "down"
  /** The last error, while not up. */
  readonly error?: string | undefined
  /** When it entered this state (ms since the epoch). */
  readonly since: number
}

export class Sources extends Context.Service<Sources, {
  /** Each source this member runs, as it stands now. */
  readonly status: Effect.Effect<ReadonlyArray<SourceStatus>>
  /** Every change of state, from now on. */
  readonly changes: Stream.Stream<SourceStatus>
  /** A source reports its state (a no-op when unchanged); the registry marks what only a down source knows as stale (not while connecting). */
  readonly report: (source: SourceName, state: SourceStatus["state"], error?: string) => Effect.Effect<void>
}>()("cluster-comm/Sources") {
  static readonly layer = (running: ReadonlyArray<SourceName>) =>
    Layer.effect(
      Sources,
      Effect.gen(function*() {
        const registry = yield* Registry
        const now = Date.now()
        const states = new Map<SourceName, SourceStatus>(
          running.map((source) => [source, { source, state: source === "redis" ? "connecting" : "up", since: now }])
        )
        const pubsub = yield* PubSub.sliding<SourceStatus>(64)
        yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))
        const report = (source: SourceName, state: SourceStatus["state"], error?: string) =>
          Effect.suspend(() => {
            const current = states.get(source)
            if (current !== undefined && current.state === state && current.error === error) return Effect.void
            const status: SourceStatus = { source, state, error: state === "up" ? undefined : error, since: Date.now() }
            states.set(source, status)
            registry.sourceUp(source, state !== "down")
            const line = `discovery source ${source} is ${state}${status.error === undefined ? "" : `: ${status.error}`}`
            return PubSub.publish(pubsub, status).pipe(
              Effect.andThen(state === "down" ? Effect.logWarning(line) : Effect.logInfo(line))
            )
          })
        return Sources.of({
          status: Effect.sync(() => [...states.values()]),
          changes: Stream.fromPubSub(pubsub),
          report
        })
      })
    )
}
