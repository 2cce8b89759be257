/** What the bench's members wait for. */
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import { Cluster } from "cluster-comm"

/**
 * Completes once this member knows `count` other services. Events begin with
 * everyone already known: count distinct services found, no polling.
 */
export const knowsOthers = (count: number) =>
  Effect.suspend(() => {
    const known = new Set<string>()
    return Cluster.events.pipe(
      Stream.filter((e) => e._tag === "ServiceFound"),
      Stream.takeWhile((e) => {
        known.add(e.service.id)
        return known.size < count
      }),
      Stream.runDrain
    )
  })
