/**
 * The registry: every service heard of, by id. It runs the membership hooks
 * (`service eval`, then `validate` or `found`; `lost`), expires services
 * unheard for `ttl`, tells restarts from conflicts, and publishes events.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import * as Stream from "effect/Stream"
import { makeAlarm } from "../internal/alarm.ts"
import { isLocalAddress } from "../internal/host.ts"
import type { Sender } from "../schema/Frame.ts"
import {
  type Advertised,
  type ClusterEvent,
  type Service,
  ServiceConflict,
  ServiceFound,
  serviceId,
  ServiceLost,
  ServiceUpdated,
  type SourceName
} from "../schema/Service.ts"
import { HookPoint, Hooks } from "./Hooks.ts"
import { Stats } from "./Stats.ts"

/** What a frame says of its sender; `protocols` only when it is a beacon. */
export interface Sighting {
  readonly sender: Sender
  readonly address: string
  readonly protocols?: ReadonlyArray<Advertised> | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  /** The descriptor version a full beacon carries. */
  readonly version?: number | undefined
  /**
   * The discovery source that heard it; undefined for traffic (a message,
   * a query), which refreshes the sources that already know the sender.
   */
  readonly source?: SourceName | undefined
}

export interface RegistryOptions {
  readonly ttl: Duration.Duration
  /** Our own id and instance: a frame claiming our id from another instance is a conflict. */
  readonly self: { readonly id: string; readonly instance: string }
  readonly bufferSize: number
  /** At most this many services are known at once. */
  readonly maxServices: number
}

export class Registry extends Context.Service<Registry, {
  /**
   * Records a sign of life. Returns the service as registered, or undefined
   * when the frame must go no further (a hook rejected it, or it comes from
   * an instance in conflict); such drops are counted here.
   */
  readonly observe: (sighting: Sighting) => Effect.Effect<Service | undefined>
  /**
   * `observe`'s work done at once, for a source that takes its events in
   * order outside a fiber: an `Exit` when it ended then (no membership hook
   * to run), else an Effect of what is left, to run before the next event.
   */
  readonly observeUnsafe: (sighting: Sighting) => Effect.Effect<Service | undefined>
  /**
   * The synchronous fast path of `observe`: the known, unchanged service with
   * its `lastSeen` refreshed, or undefined when `observe` must run (new,
   * changed, conflicting, or hooks to run).
   */
  readonly observeNow: (sighting: Sighting) => Service | undefined
  /** The sender said it leaves: drop it now, if that instance is the one we know. */
  readonly leave: (sender: Sender) => Effect.Effect<void>
  /**
   * Someone could not reach this service: unless it is heard from again within
   * `window`, it expires then (or at its ttl, whichever comes first).
   */
  readonly suspect: (id: string, window: Duration.Duration) => void
  /**
   * A short beat: the service of that instance, refreshed, when we know it at
   * that descriptor version; undefined when we must ask for its descriptor.
   */
  readonly beat: (sender: Sender, version: number, address: string, source: SourceName) => Effect.Effect<Service | undefined>
  /**
   * The synchronous fast path of `beat`, taken by nearly every beat: the
   * service refreshed, or undefined when `beat` must run (unknown instance,
   * other version or address, or membership hooks to run).
   */
  readonly beatNow: (sender: Sender, version: number, address: string, source: SourceName) => Service | undefined
  /**
   * A source no longer knows this instance (Redis reaped it, or a full read
   * no longer lists it): the service is lost when no source knows it any
   * more; `left` loses it at once, whatever else knows it.
   */
  readonly release: (id: string, instance: string, source: SourceName, why: "left" | "expired") => Effect.Effect<void>
  /** `release`'s work done at once, as `observeUnsafe` does `observe`'s. */
  readonly releaseUnsafe: (id: string, instance: string, source: SourceName, why: "left" | "expired") => Effect.Effect<void>
  /**
   * A source went down or came back. While it is down, services that only
   * it knows are kept and marked `stale`, never lost.
   */
  readonly sourceUp: (source: SourceName, up: boolean) => void
  /**
   * Seconds from our join to finding each service found in its first
   * seconds (those were there when we joined), since the last call: plain
   * numbers, which Telemetry turns into its histogram when it publishes.
   */
  readonly takeDiscovered: () => ReadonlyArray<number>
  /**
   * The services the multicast group does not reach (no source but seeds or
   * Redis knows them): broadcasts and beats go to them one by one. Cached
   * between membership changes.
   */
  readonly beyondGroup: () => ReadonlyArray<Service>
  /** A service by id, synchronously (for the per-frame path). */
  readonly get: (id: string) => Service | undefined
  /** Every known service, as a snapshot. */
  readonly list: Effect.Effect<ReadonlyArray<Service>>
  /**
   * Membership events: first a `ServiceFound` for every service already known
   * (so a late subscriber misses no one), then found, lost, updated and
   * conflict events as they happen.
   */
  readonly events: Stream.Stream<ClusterEvent>
}>()("cluster-comm/Registry") {
  static readonly layer = (options: RegistryOptions) =>
    Layer.effect(
      Registry,
      Effect.gen(function*() {
        const hooks = yield* Hooks
        const stats = yield* Stats
        const clock = yield* Clock.Clock
        const ttlMillis = Duration.toMillis(options.ttl)
        const services = new Map<string, Service>()
        // For short beats, which name an instance and a descriptor version
        // only: one lookup a beat (every member of a process hears every beat).
        const byInstance = new Map<string, { readonly service: Service; readonly version: number | undefined }>()
        // Suspected services: the time by which they must be heard from again.
        const deadlines = new Map<string, number>()
        // Instances replaced by a newer one under the same id: heard again, they are in conflict.
        const retired = new Map<string, string>()
        const reported = new Set<string>()
        // When each beacon source last heard each service, and which sources know it.
        const heard = new Map<string, Heard>()
        let downMask = 0
        // Unbounded, held to `bufferSize` here: a bounded PubSub allocates its whole
        // ring at the join (two arrays of `bufferSize`), for events that are rare.
        const pubsub = yield* PubSub.unbounded<ClusterEvent>()
        yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))

        let beyond: ReadonlyArray<Service> | undefined
        const publish = (event: ClusterEvent) => {
          beyond = undefined
          // Its size is what the slowest subscriber has yet to take.
          if (PubSub.sizeUnsafe(pubsub) >= options.bufferSize) stats.drop("subscriber-full")
          else PubSub.publishUnsafe(pubsub, event)
        }

        // Kept plain so that joining, when nearly every service is found, runs no metric code.
        const joinedAt = clock.currentTimeMillisUnsafe()
        let discovered: Array<number> = []
        const found = (service: Service) => {
          publish(new ServiceFound({ service }))
          const after = clock.currentTimeMillisUnsafe() - joinedAt
          // Bounded: past `maxServices` in the window, services come and go; the histogram has enough.
          if (after <= DISCOVERY_WINDOW_MILLIS && discovered.length < options.maxServices) discovered.push(after / 1000)
        }

        const conflict = (service: Service, kept: string, rejected: string) => {
          stats.drop("conflict")
          const key = `${service.id}/${rejected}`
          if (reported.has(key)) return Effect.succeed(undefined)
          if (reported.size >= options.maxServices) reported.clear() // bounded: may report again
          reported.add(key)
          publish(new ServiceConflict({ service, instances: [kept, rejected] }))
          return Effect.logWarning(
            `two live processes claim ${service.id} (instances ${kept} and ${rejected}); ${rejected} is ignored`
          ).pipe(Effect.as(undefined))
        }

        const lose = (service: Service, why: "left" | "expired") => {
          services.delete(service.id)
          heard.delete(service.id)
          deadlines.delete(service.id)
          retired.delete(service.id)
          byInstance.delete(service.instance)
          publish(new ServiceLost({ service, why }))
          // A loss cannot be cancelled: the hook sees it, its verdict is moot.
          return hooks.has(LOST)
            ? Effect.ignore(hooks.run(LOST, service))
            : Effect.void
        }

        // Nothing changed and no hook wants to see it: just note the time.
        const observeNow = (sighting: Sighting): Service | undefined => {
          const { sender } = sighting
          const known = services.get(idOf(sender))
          if (
            known === undefined || known.instance !== sender.instance || known.address !== sighting.address ||
            (sighting.protocols !== undefined && !sameProtocols(known.protocols, sighting.protocols)) ||
            (sighting.tags !== undefined && !sameTags(known.tags, sighting.tags))
          ) return undefined
          return refreshed(known, sighting.source)
        }

        /**
         * Notes a sign of life in place; undefined when membership hooks must
         * see it instead. A source new to the service replaces it with one that
         * lists the source (an update event, without the hooks: its details are the same).
         */
        const refreshed = (known: Service, source: SourceName | undefined): Service | undefined => {
          if (hooks.has(EVAL) || hooks.has(VALIDATE)) return undefined
          const now = clock.currentTimeMillisUnsafe()
          ;(known as { lastSeen: number }).lastSeen = now
          if (deadlines.size > 0) deadlines.delete(known.id)
          const h = heard.get(known.id)
          if (h === undefined) return known
          if (source === undefined) {
            // Traffic: a sign of life for the beacon sources that know it.
            if (h.multicast > 0) h.multicast = now
            if (h.seeds > 0) h.seeds = now
            return known
          }
          const before = h.mask
          mark(h, source, now)
          return h.mask === before ? known : replace(known, h)
        }

        /** The service as its sources now stand, stored and (unless only its staleness changed) announced. */
        const replace = (current: Service, h: Heard, announce = true): Service => {
          const service: Service = { ...current, sources: SOURCE_SETS[h.mask]!, stale: isStale(h.mask) }
          services.set(service.id, service)
          const beating = byInstance.get(service.instance)
          byInstance.set(service.instance, { service, version: beating?.version })
          if (announce) publish(new ServiceUpdated({ service, previous: current }))
          else beyond = undefined
          return service
        }

        const isStale = (mask: number) => mask !== 0 && (mask & ~downMask) === 0

        /** The service a short beat names, when we know it at that descriptor version. */
        const atVersion = (sender: Sender, version: number): Service | undefined => {
          const known = byInstance.get(sender.instance)
          return known !== undefined && known.version === version && known.service.hostId === sender.hostId ? known.service : undefined
        }

        /**
         * `observe`'s work, done now: an Exit when it ended at once (no
         * membership hook to run), else an Effect of what is left.
         */
        const observeUnsafe = (sighting: Sighting): Effect.Effect<Service | undefined> => {
          const { sender } = sighting
          const id = serviceId(sender.hostId, sender.name)
          const known = services.get(id)
          const now = clock.currentTimeMillisUnsafe()
          if (id === options.self.id) {
            return conflict(
              serviceFrom(id, sighting, [], [], now),
              options.self.instance,
              sender.instance
            )
          }
          if (known !== undefined && known.instance !== sender.instance && retired.get(id) === sender.instance) {
            return conflict(known, known.instance, sender.instance)
          }
          // A live service does not move: its beacons come from one address, and
          // a restart comes from the same host. Another address claiming its id
          // (with a new instance, or beaconing as the same one) is refused.
          if (
            known !== undefined && known.address !== sighting.address &&
            (known.instance !== sender.instance || sighting.protocols !== undefined)
          ) {
            // One member on this host, heard on the loopback group and at the
            // address it advertises elsewhere: both are its own.
            if (known.instance === sender.instance && known.local && isLocalAddress(sighting.address)) {
              return Effect.succeed(refreshed(known, sighting.source) ?? known)
            }
            stats.drop("spoofed")
            return Effect.succeed(undefined)
          }
          const sameInstance = known?.instance === sender.instance
          const protocols = sighting.protocols ?? (sameInstance ? known.protocols : [])
          const tags = sighting.tags ?? (sameInstance ? known.tags : [])
          const seen = observeNow(sighting)
          if (seen !== undefined) {
            // Same details at another descriptor version (a change and its undo,
            // both missed): note it, or every beat would ask again.
            const beating = byInstance.get(seen.instance)
            if (sighting.version !== undefined && beating !== undefined && beating.version !== sighting.version) {
              byInstance.set(seen.instance, { service: beating.service, version: sighting.version })
            }
            return Effect.succeed(seen)
          }
          // Bounded: past `maxServices`, strangers wait until someone leaves or expires.
          if (known === undefined && services.size >= options.maxServices) {
            stats.drop("registry-full")
            return Effect.succeed(undefined)
          }
          const judge = known === undefined ? FOUND : VALIDATE
          const candidate = serviceFrom(id, sighting, protocols, tags, now)
          // No hook to ask (the common case): admitted at once, without a fiber.
          if (!hooks.has(EVAL) && !hooks.has(judge)) return Effect.succeed(admit(candidate, id, sighting, now))
          return hooks.run(EVAL, candidate).pipe(
            Effect.flatMap((s) => hooks.run(judge, s)),
            Effect.map((s) => admit(s, id, sighting, now)),
            Effect.catchTag("HookRejected", () => {
              stats.drop("hook-rejected")
              return Effect.succeed(undefined)
            })
          )
        }
        const observe = (sighting: Sighting): Effect.Effect<Service | undefined> => Effect.suspend(() => observeUnsafe(sighting))

        /** Stores a service the hooks let through (or no hook was asked about), and announces it. */
        const admit = (s: Service, id: string, sighting: Sighting, now: number): Service => {
          const { sender } = sighting
          const current = services.get(id)
          // The sources are the registry's: a restart starts them afresh.
          let h = heard.get(id)
          if (h === undefined || current?.instance !== sender.instance) {
            h = { multicast: 0, seeds: 0, mask: 0 }
            heard.set(id, h)
          }
          mark(h, sighting.source ?? "multicast", now)
          // A hook may change details, never the identity the frame proved.
          const service: Service = {
            ...s,
            id,
            hostId: sender.hostId,
            name: sender.name,
            instance: sender.instance,
            sources: SOURCE_SETS[h.mask]!,
            stale: isStale(h.mask)
          }
          services.set(id, service)
          deadlines.delete(id)
          // The version last heard for this id, unless this sighting brings one.
          const version = sighting.version ?? (current === undefined ? undefined : byInstance.get(current.instance)?.version)
          if (current !== undefined && current.instance !== service.instance) byInstance.delete(current.instance)
          byInstance.set(service.instance, { service, version })
          if (current === undefined) found(service)
          else if (changed(current, service)) {
            if (current.instance !== service.instance) retired.set(id, current.instance)
            publish(new ServiceUpdated({ service, previous: current }))
          }
          return service
        }

        const releaseUnsafe = (id: string, instance: string, source: SourceName, why: "left" | "expired"): Effect.Effect<void> => {
          const known = services.get(id)
          const h = heard.get(id)
          if (known === undefined || h === undefined || known.instance !== instance) return Effect.void
          if (why === "left") return lose(known, "left")
          if (source !== "redis") h[source] = 0
          h.mask &= ~BIT[source]
          if (h.mask === 0) return lose(known, "expired")
          if (SOURCE_SETS[h.mask] !== known.sources) replace(known, h)
          return Effect.void
        }

        // One plain pass over the services (no copy, no effect per service):
        // only the expired ones go on to `lose`. It returns when the next one
        // could expire: the oldest sign of life plus the ttl, or the nearest
        // suspicion deadline.
        // A beacon source loses a service unheard for the ttl; Redis loses it
        // only by saying so (`release`), so services it knows never expire here.
        const sweep = (now: number) => {
          let expired: Array<Service> | undefined
          let next = now + ttlMillis
          const silent = (service: Service, h: Heard) => {
            h.multicast = 0
            h.seeds = 0
            h.mask &= REDIS
            if (h.mask === 0) (expired ??= []).push(service)
            else replace(service, h)
          }
          for (const service of services.values()) {
            const h = heard.get(service.id)!
            // Known to Redis alone: nothing to expire here, and no reason to wake.
            if ((h.mask & BEACONS) === 0) continue
            const at = service.lastSeen + ttlMillis
            if (now > at) silent(service, h)
            else if (at < next) next = at
          }
          if (deadlines.size > 0) {
            for (const [id, deadline] of deadlines) {
              const service = services.get(id)
              if (service === undefined) continue
              if (now > deadline) {
                deadlines.delete(id)
                const h = heard.get(id)!
                if ((h.mask & BEACONS) !== 0) silent(service, h)
              } else if (deadline < next) next = deadline
            }
          }
          return expired === undefined ? Effect.succeed(next) : Effect.as(Effect.forEach(expired, (s) => lose(s, "expired"), { discard: true }), next)
        }
        // The sweep sleeps until then, not on a fixed beat (an idle member
        // wakes about once a ttl, not four times a second); a new suspicion
        // that falls earlier wakes it at once.
        const alarm = yield* makeAlarm(sweep, MIN_SWEEP_MILLIS)

        return Registry.of({
          observe,
          observeUnsafe,
          observeNow,
          leave: (sender) =>
            Effect.suspend(() => {
              const known = services.get(serviceId(sender.hostId, sender.name))
              return known !== undefined && known.instance === sender.instance ? lose(known, "left") : Effect.void
            }),
          beat: (sender, version, address, source) =>
            Effect.suspend(() => {
              const known = atVersion(sender, version)
              // Known at this version: a sign of life like any other (address checks included).
              return known === undefined
                ? Effect.succeed(undefined)
                : observe({ sender: { hostId: known.hostId, instance: known.instance, name: known.name }, address, source })
            }),
          beatNow: (sender, version, address, source) => {
            const known = atVersion(sender, version)
            return known !== undefined && known.address === address ? refreshed(known, source) : undefined
          },
          release: (id, instance, source, why) => Effect.suspend(() => releaseUnsafe(id, instance, source, why)),
          releaseUnsafe,
          sourceUp: (source, up) => {
            const before = downMask
            downMask = up ? downMask & ~BIT[source] : downMask | BIT[source]
            if (downMask === before) return
            for (const [id, h] of heard) {
              const service = services.get(id)
              // Not an event a service: a Redis outage would be one for every member (the source's own change says it once).
              if (service !== undefined && service.stale !== isStale(h.mask)) replace(service, h, false)
            }
          },
          takeDiscovered: () => {
            const taken = discovered
            discovered = []
            return taken
          },
          get: (id) => services.get(id),
          beyondGroup: () => beyond ??= [...services.values()].filter((s) => !s.sources.includes("multicast")),
          suspect: (id, window) => {
            if (!services.has(id)) return
            const deadline = clock.currentTimeMillisUnsafe() + Duration.toMillis(window)
            const current = deadlines.get(id)
            if (current === undefined || deadline < current) deadlines.set(id, deadline)
            alarm.wakeBy(deadline)
          },
          list: Effect.sync(() => [...services.values()].map((s) => ({ ...s }))),
          // Subscribe first, then snapshot: nothing falls in between. A service
          // found in between shows in both; its live ServiceFound is skipped.
          events: Stream.unwrap(
            Effect.gen(function*() {
              const subscription = yield* PubSub.subscribe(pubsub)
              const snapshot = [...services.values()].map((s) => ({ ...s }))
              const listed = new Set(snapshot.map((s) => `${s.id}/${s.instance}`))
              return Stream.concat(
                Stream.fromIterable(snapshot.map((service) => new ServiceFound({ service }))),
                Stream.fromSubscription(subscription).pipe(
                  Stream.filter((e) => {
                    // Only a found that repeats the snapshot is skipped; once the
                    // service is lost or changes, its next found is news.
                    const key = `${e.service.id}/${e.service.instance}`
                    if (e._tag === "ServiceFound") return !listed.delete(key)
                    listed.delete(key)
                    return true
                  })
                )
              )
            })
          )
        })
      })
    )
}

/** When each beacon source last heard a service (0: it does not know it), and the sources that know it, as bits. */
interface Heard {
  multicast: number
  seeds: number
  mask: number
}
const BIT = { multicast: 1, seeds: 2, redis: 4 } as const
const BEACONS = 3
const REDIS = 4
/** Every set of sources, made once: services share them (and compare them by identity). */
const SOURCE_SETS: ReadonlyArray<ReadonlyArray<SourceName>> = Array.from({ length: 8 }, (_, mask) =>
  (["multicast", "seeds", "redis"] as const).filter((s) => (mask & BIT[s]) !== 0))

const mark = (h: Heard, source: SourceName, now: number) => {
  if (source !== "redis") h[source] = now
  h.mask |= BIT[source]
}

/** Services found this soon after our join were there when we joined. */
const DISCOVERY_WINDOW_MILLIS = 5000

/** The sweep wakes at most this often, however close the next expiry. */
const MIN_SWEEP_MILLIS = 20

// The membership hook points, made once: they are checked for every frame.
const EVAL = HookPoint.service("eval")
const VALIDATE = HookPoint.service("validate")
const FOUND = HookPoint.service("found")
const LOST = HookPoint.service("lost")

// Decoding reuses one Sender object per link, so its id is worth remembering.
const ids = new WeakMap<Sender, string>()
const idOf = (sender: Sender): string => {
  let id = ids.get(sender)
  if (id === undefined) {
    id = serviceId(sender.hostId, sender.name)
    ids.set(sender, id)
  }
  return id
}

const serviceFrom = (
  id: string,
  s: Sighting,
  protocols: ReadonlyArray<Advertised>,
  tags: ReadonlyArray<string>,
  now: number
): Service => ({
  id,
  name: s.sender.name,
  hostId: s.sender.hostId,
  instance: s.sender.instance,
  address: s.address,
  local: isLocalAddress(s.address),
  protocols,
  tags,
  lastSeen: now,
  sources: [],
  stale: false
})

const sameTags = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a === b || (a.length === b.length && a.every((t, i) => t === b[i]))

const sameProtocols = (a: ReadonlyArray<Advertised>, b: ReadonlyArray<Advertised>) =>
  a === b || (a.length === b.length && a.every((p, i) => p.protocol === b[i]!.protocol && p.port === b[i]!.port))

const changed = (a: Service, b: Service) =>
  a.sources !== b.sources || a.stale !== b.stale || a.instance !== b.instance || a.address !== b.address || a.local !== b.local ||
  !sameProtocols(a.protocols, b.protocols) || !sameTags(a.tags, b.tags)
