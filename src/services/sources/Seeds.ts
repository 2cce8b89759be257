/**
 * The seeds source: members beyond the multicast group, found by probing
 * listed `host:port` endpoints by unicast. Each poll (a heartbeat) resolves
 * every name afresh (A and AAAA, so a DNS name listing all members is a seed
 * list) and probes each endpoint not yet known as a live member; one that
 * does not answer is probed again after a capped, jittered back-off, forever.
 * Once found, a member is kept alive by unicast beats (see Discovery). A
 * seed answers with the members it knows beyond the group (a Peers frame),
 * and those are probed too: one seed is enough to find them all.
 */
import { dnsPromises, net } from "../../internal/builtins.ts"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import type { Seed } from "../../schema/Config.ts"
import type { Service } from "../../schema/Service.ts"
import { Discovery } from "../Discovery.ts"
import { Registry } from "../Registry.ts"
import { Sources } from "../Sources.ts"

export interface SeedsOptions {
  readonly seeds: ReadonlyArray<Seed>
  readonly heartbeat: Duration.Duration
}

/** The longest wait between probes of a seed that does not answer. */
const MAX_BACKOFF_MILLIS = 30_000

/** Whether a live member answers at this udp endpoint. */
const knownAt = (services: ReadonlyArray<Service>, address: string, port: number) =>
  services.some((s) => s.address === address && s.protocols.some((p) => p.protocol === "udp" && p.port === port))

/** Every address a seed's host stands for: itself when it is one, else what DNS says now. */
export const resolveSeed = (seed: Seed): Effect.Effect<ReadonlyArray<string>, Error> =>
  net.isIP(seed.host) !== 0
    ? Effect.succeed([seed.host])
    : Effect.tryPromise({
      try: () => dnsPromises().lookup(seed.host, { all: true }),
      catch: (e) => e instanceof Error ? e : new Error(String(e))
    }).pipe(Effect.map((found) => [...new Set(found.map((a) => a.address))]))

export const SeedsSource = {
  layer: (options: SeedsOptions) =>
    Layer.effectDiscard(Effect.gen(function*() {
      const discovery = yield* Discovery
      const registry = yield* Registry
      const sources = yield* Sources
      const interval = Duration.toMillis(options.heartbeat)
      // Per endpoint: when it may be probed next, and how long the wait grows to.
      const backoff = new Map<string, { next: number; wait: number }>()

      const poll = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const services = yield* registry.list
        const failures: Array<string> = []
        const live = new Set<string>()
        for (const seed of options.seeds) {
          const addresses = yield* Effect.result(resolveSeed(seed))
          if (addresses._tag === "Failure") {
            failures.push(`${seed.host}: ${addresses.failure.message}`)
            continue
          }
          for (const address of addresses.success) {
            const key = `${address}:${seed.port}`
            live.add(key)
            if (reached(services, address, seed.port)) {
              backoff.delete(key)
              continue
            }
            const b = backoff.get(key) ?? { next: 0, wait: interval }
            if (now < b.next) continue
            const jitter = yield* Random.nextBetween(0.8, 1.2)
            backoff.set(key, { next: now + b.wait * jitter, wait: Math.min(b.wait * 2, MAX_BACKOFF_MILLIS) })
            yield* discovery.probe(address, seed.port)
          }
        }
        // Endpoints no name stands for any more are forgotten.
        for (const key of backoff.keys()) if (!live.has(key)) backoff.delete(key)
        yield* sources.report(
          "seeds",
          failures.length === options.seeds.length && failures.length > 0 ? "down" : "up",
          failures.length > 0 ? `cannot resolve ${failures.join("; ")}` : undefined
        )
      })
      /** A live member's udp endpoint, or our own (a seed list may name us too): nothing to probe. */
      const reached = (services: ReadonlyArray<Service>, address: string, port: number) =>
        knownAt(services, address, port) || knownAt([discovery.self()], address, port)

      // The members a seed told us of: each probed at most once a heartbeat (at most 4,096 remembered).
      const introduced = new Map<string, number>()
      discovery.onPeers((endpoints) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const services = yield* registry.list
          for (const e of endpoints) {
            const key = `${e.address}:${e.port}`
            if (reached(services, e.address, e.port) || now - (introduced.get(key) ?? 0) < interval) continue
            if (introduced.size >= 4096) introduced.clear()
            introduced.set(key, now)
            yield* discovery.probe(e.address, e.port)
          }
        }))
      yield* Effect.gen(function*() {
        while (true) {
          yield* poll
          const jitter = yield* Random.nextBetween(0.9, 1.1)
          yield* Effect.sleep(Duration.millis(interval * jitter))
        }
      }).pipe(Effect.forkScoped)
    }))
}
