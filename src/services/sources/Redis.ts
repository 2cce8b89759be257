/**
 * The Redis source: membership through a Redis server, for members the
 * multicast group does not reach. Built only on the `Redis` service of
 * `effect/persistence/Redis`: the user's layer, or node-redis through
 * `@effect/platform-node`'s `NodeRedis` for a URL (loaded only then).
 *
 * Per heartbeat one script call (see RedisScripts.ts) refreshes us and reaps
 * the dead; joins, updates and losses arrive by pub/sub, each with the
 * revision it made. A gap in the revisions, or a revision gone back (Redis
 * restarted empty), brings a full read. The source never fails the member:
 * while Redis is away it reports `down`, the registry keeps what only Redis
 * knows as stale, and it reconnects with a capped, jittered back-off.
 * Messages never pass through Redis: it carries membership only.
 */
import { net } from "../../internal/builtins.ts"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Redis from "effect/persistence/Redis"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import type { ClusterConfig } from "../../schema/Config.ts"
import { decodeFrame, encodeFrame, INSTANCE_ID, isDecodeFailure, type Sender } from "../../schema/Frame.ts"
import { serviceId } from "../../schema/Service.ts"
import { Discovery } from "../Discovery.ts"
import { Keyring, type OpenFailure, SEALED_MAGIC } from "../Keyring.ts"
import { Registry, type Sighting } from "../Registry.ts"
import { Sources } from "../Sources.ts"
import { Stats } from "../Stats.ts"
import { acquireLink, describe, reconnectBound, type RedisLink } from "./RedisLink.ts"
import { makeScripts, redisKeys } from "./RedisScripts.ts"

export interface RedisSourceOptions {
  readonly config: ClusterConfig
  readonly sender: Sender
  /** The `Redis` service to use; without it, node-redis at `config.redis.url`. */
  readonly redis?: Layer.Layer<Redis.Redis, unknown> | undefined
}

/** How long a member stays in the set unrefreshed: two beats and a little, so one lost beat is forgiven. */
export const redisTtl = (config: ClusterConfig) =>
  Math.min(Duration.toMillis(config.ttl), Math.round(2.2 * Duration.toMillis(config.heartbeat)))

/** Departures remembered against reads that crossed them (a bound for a cluster with much churn). */
const MAX_GONE = 4096

/** The longest lease a late member asks for, in ttls. */
const MAX_LEASE_FACTOR = 5

/** How fast the slowest interval a lease covers is forgotten, a beat (from 5 ttls to 1 in about 7 beats on time). */
const SLOWEST_DECAY = 0.8

/** node-redis for a URL (ACL user and password, `rediss://` for TLS, all in the URL). */
const nodeRedis = (url: string, connectTimeout: number): Layer.Layer<Redis.Redis, unknown> =>
  Layer.unwrap(Effect.promise(() => import("@effect/platform-node/NodeRedis")).pipe(
    Effect.map((m) => m.layer({ url, disableOfflineQueue: true, socket: { connectTimeout } }))
  ))

/** What a descriptor says: the member it describes, or why it is not one of ours. */
type Described = Sighting | OpenFailure | "redis-invalid"

/** A plain descriptor (address NUL Heartbeat frame) as a sighting. */
const readDescriptor = (plain: Uint8Array): Described => {
  const nul = plain.indexOf(0)
  const address = nul > 0 && nul <= 45 ? Buffer.from(plain.subarray(0, nul)).toString("latin1") : ""
  const frame = net.isIP(address) === 0 ? undefined : decodeFrame(plain.subarray(nul + 1))
  if (frame === undefined || isDecodeFailure(frame) || frame._tag !== "Heartbeat") return "redis-invalid"
  return { sender: frame.sender, address, protocols: frame.protocols, tags: frame.tags, version: frame.version, source: "redis" }
}

/** Texts read without a key, per process link; past this many it starts afresh. */
const MAX_READ = 4096
const readByLink = new WeakMap<RedisLink, Map<string, Described>>()
/**
 * `read(text)` once for the members of a process without a key: each join
 * reaches every member, and 50 members decoding the same text 50 times was
 * a quarter of a process's work on an event. Sightings are immutable values.
 * Not `boundedMemo`: a miss is read by the member asking, keyless then (a
 * member that installs a key later must not read for the others).
 */
const readOnce = (link: RedisLink, text: string, read: (text: string) => Described): Described => {
  let texts = readByLink.get(link)
  if (texts === undefined) readByLink.set(link, texts = new Map())
  let described = texts.get(text)
  if (described === undefined) {
    if (texts.size >= MAX_READ) texts.clear()
    described = read(text)
    texts.set(text, described)
  }
  return described
}

/** An event on the cluster's channel: "rev kind instance [descriptor]". */
interface RedisEvent {
  readonly rev: number
  readonly kind: string
  readonly instance: string
  readonly text: string | undefined
}
let lastEvent: { readonly message: string; readonly event: RedisEvent | undefined } | undefined
/** An event's parts, or undefined when it is not one; the last one is kept, as every member of the process takes the same one in turn. */
const parseEvent = (message: string): RedisEvent | undefined => {
  if (lastEvent?.message === message) return lastEvent.event
  const [revText, kind = "", instance, text] = message.split(" ", 4)
  const rev = Number(revText)
  const event = !Number.isSafeInteger(rev) || instance === undefined || !INSTANCE_ID.test(instance) ? undefined : { rev, kind, instance, text }
  lastEvent = { message, event }
  return event
}

export const RedisSource = {
  layer: (options: RedisSourceOptions) =>
    Layer.effectDiscard(Effect.gen(function*() {
      const { config, sender } = options
      const discovery = yield* Discovery
      const registry = yield* Registry
      const sources = yield* Sources
      const keyring = yield* Keyring
      const stats = yield* Stats
      const clock = yield* Clock.Clock
      // Loaded here, not at the top: a member without Redis never loads it (nor the Schema it uses).
      const RedisModule = yield* Effect.promise(() => import("effect/persistence/Redis"))
      const scripts = makeScripts(RedisModule)
      const heartbeat = Duration.toMillis(config.heartbeat)
      const ttl = redisTtl(config)
      // After trouble, who has not registered again by then is let go. A
      // member that comes back later is still listed: the first beat after an
      // outage keeps every entry it finds long expired for `returnMillis`.
      const restartGrace = Math.max(5000, 3 * ttl)
      const linkConnectTimeout = Math.max(2000, 2 * heartbeat)
      // Until a member whose link broke meanwhile is connected again and has beaten.
      const returnMillis = Math.round(reconnectBound(linkConnectTimeout) + 1.1 * heartbeat)
      // A member that stalled with a late caller beats as soon as their process runs again: a short sparing is enough.
      const spareMillis = Math.round(heartbeat / 2)
      const keys = redisKeys(config.redis?.namespace ?? "default", config.address, config.port)
      const layer = options.redis ?? nodeRedis(config.redis!.url, Math.max(1000, heartbeat))
      // A command that has not answered within a heartbeat has failed (a frozen or unreachable Redis).
      const timeout = Duration.millis(Math.max(500, heartbeat))
      // A full read of a thousand members is a few hundred kB: more time for it (it runs beside the beats).
      const readTimeout = Duration.millis(Math.max(5000, 3 * heartbeat))

      // Our descriptor, made again only when it changes: address NUL Heartbeat frame, sealed when we have a key.
      let described: { version: number; sealed: boolean; text: string } | undefined
      const descriptor = () => {
        const version = discovery.version()
        const sealed = keyring.enabled()
        if (described?.version === version && described.sealed === sealed) return { text: described.text, changed: false }
        const self = discovery.self()
        const plain = Buffer.concat([
          Buffer.from(`${self.address}\0`),
          encodeFrame({ _tag: "Heartbeat", sender, protocols: self.protocols, tags: self.tags, version })
        ])
        const changed = described !== undefined
        described = { version, sealed, text: (sealed ? keyring.seal(plain, 0) : plain).toString("base64") }
        return { text: described.text, changed }
      }

      /** A descriptor's text as this member reads it (opened with its key, when it has one). */
      const read = (text: string): Described => {
        const bytes = Buffer.from(text, "base64")
        if (!keyring.enabled() && bytes[0] !== SEALED_MAGIC) return readDescriptor(bytes)
        const opened = keyring.open(bytes)
        return typeof opened === "string" ? opened : readDescriptor(opened.frame)
      }
      /** A descriptor read from Redis, or undefined (counted) when it is not one of ours. */
      const decode = (instance: string, text: string): Sighting | undefined => {
        // Without a key, a text reads the same for every member of the process: once for them all.
        const described = keyring.enabled() ? read(text) : readOnce(link, text, read)
        if (typeof described === "string" || described.sender.instance !== instance) {
          stats.drop(typeof described === "string" ? described : "redis-invalid")
          return undefined
        }
        return described
      }

      // Members Redis told us of, by instance (its events name instances only),
      // with the descriptor last applied (the same one again is not decoded
      // again) and the revision that told us. Events and full reads travel on
      // two connections and cross: the revisions put them in order.
      const known = new Map<string, { readonly id: string; readonly text: string; rev: number }>()
      // Instances that left or were lost, by the revision that said so, until a read past it.
      const gone = new Map<string, number>()
      // `learn` and `forget` do their work when called (events are taken outside
      // a fiber): an Exit when it is done, else an Effect of what is left.
      const learn = (instance: string, text: string, rev: number): Effect.Effect<void> => {
        if (instance === sender.instance || (gone.get(instance) ?? -1) > rev) return Effect.void
        const before = known.get(instance)
        if (before !== undefined && before.rev > rev) return Effect.void // newer news already applied
        gone.delete(instance)
        if (before?.text === text && registry.get(before.id)?.instance === instance) {
          before.rev = rev
          return Effect.void
        }
        const sighting = decode(instance, text)
        if (sighting === undefined) return Effect.void
        known.set(instance, { id: serviceId(sighting.sender.hostId, sighting.sender.name), text, rev })
        const rest = registry.observeUnsafe(sighting)
        return Exit.isExit(rest) && Exit.isSuccess(rest) ? Effect.void : Effect.asVoid(rest)
      }
      const forget = (instance: string, why: "left" | "expired", rev: number): Effect.Effect<void> => {
        const entry = known.get(instance)
        if (entry !== undefined && entry.rev > rev) return Effect.void // back since (a later join or read)
        if ((gone.get(instance) ?? -1) < rev) {
          gone.delete(instance) // re-inserted last, so the oldest go first when there are too many
          gone.set(instance, rev)
          if (gone.size > MAX_GONE) gone.delete(gone.keys().next().value!)
        }
        if (entry === undefined) return Effect.void
        known.delete(instance)
        return registry.releaseUnsafe(entry.id, instance, "redis", why)
      }

      // The process's link to this Redis (one connection and subscription for all its members).
      const link = acquireLink(
        RedisModule,
        options.redis ?? config.redis!.url,
        layer,
        Duration.millis(linkConnectTimeout),
        Effect.runForkWith(yield* Effect.context<never>())
      )
      yield* Effect.addFinalizer(() => Effect.sync(link.release))

      /** This member's view of Redis: events in order, a beat a heartbeat, reads when something was missed. */
      const session = Effect.gen(function*() {
        let seen = 0 // the highest revision applied (0: nothing read yet)
        let lastRev = -1 // the revision the last heartbeat reported
        // The revision a heartbeat reported, two beats back: events must have
        // brought it by now, however busy this process (a join storm) has been.
        let expectBy = 0
        let expectNext = 0
        let missed = false // a gap in the events: read everything at the next beat
        let readRev = 0 // the revision of the last full read: events up to it are in it
        let reading = false

        /** Everything in the set, read once for the process's members at a time; one that fails (false) is tried again at the next beat. */
        const readAll = (redis: Redis.Redis["Service"], releaseMissing: boolean): Effect.Effect<boolean> =>
          Effect.gen(function*() {
            const reply = yield* link.once(keys.state, redis.eval(scripts.read)(keys).pipe(Effect.timeout(readTimeout)))
            if (!Array.isArray(reply) || typeof reply[0] !== "number") {
              stats.drop("redis-invalid")
              missed = true
              return false
            }
            const rev = reply[0]
            const listed = new Set<string>()
            for (let i = 1; i + 1 < reply.length; i += 2) {
              const instance = reply[i]
              const text = reply[i + 1]
              if (typeof instance !== "string" || typeof text !== "string" || !INSTANCE_ID.test(instance)) {
                stats.drop("redis-invalid")
                continue
              }
              listed.add(instance)
              yield* learn(instance, text, rev)
            }
            if (releaseMissing) {
              for (const instance of [...known.keys()]) if (!listed.has(instance)) yield* forget(instance, "expired", rev)
            }
            readRev = Math.max(readRev, rev)
            seen = Math.max(seen, rev)
            for (const [instance, at] of gone) if (at <= rev) gone.delete(instance)
            return true
          }).pipe(Effect.catch(() =>
            Effect.sync(() => {
              missed = true
              return false
            })
          ))

        /** A read beside the beats: a big read must not hold our own beat back. */
        const startRead = (redis: Redis.Redis["Service"], releaseMissing: boolean) => {
          reading = true
          return readAll(redis, releaseMissing).pipe(
            Effect.ensuring(Effect.sync(() => reading = false)),
            Effect.forkScoped
          )
        }

        /** Takes one event now: an Exit when that is all, else an Effect of what is left (a membership hook to run). */
        const onEvent = (message: string): Effect.Effect<void> => {
          const event = parseEvent(message)
          if (event === undefined) {
            stats.drop("redis-invalid")
            return Effect.void
          }
          const { rev, kind, instance, text } = event
          if (seen > 0 && rev > seen + 1) missed = true
          if (rev > seen) seen = rev
          if (rev <= readRev) return Effect.void // a read since has it
          switch (kind) {
            case "join":
            case "update":
              return text === undefined ? Effect.void : learn(instance, text, rev)
            case "left":
              return forget(instance, "left", rev)
            case "lost":
              return forget(instance, "expired", rev)
            default:
              stats.drop("redis-invalid")
              return Effect.void
          }
        }

        // Events are taken as the link hands them over, without a fiber a
        // member (an event reaches every member of the process). One that
        // leaves work (a hook to run) and those after it wait in order here,
        // for this member's fiber.
        const waiting = yield* Queue.unbounded<Effect.Effect<void>>()
        let queued = 0
        const stop = link.listen(keys.channel, (message) => {
          if (queued === 0) {
            let rest: Effect.Effect<void>
            try {
              rest = onEvent(message)
            } catch (e) {
              rest = Effect.die(e)
            }
            if (Exit.isExit(rest) && Exit.isSuccess(rest)) return
            queued++
            Queue.offerUnsafe(waiting, rest)
          } else {
            queued++
            Queue.offerUnsafe(waiting, Effect.suspend(() => onEvent(message)))
          }
        })
        yield* Effect.addFinalizer(() => Effect.sync(stop))
        yield* Effect.gen(function*() {
          while (true) {
            const batch = yield* Queue.takeAll(waiting)
            for (let i = 0; i < batch.length; i++) {
              yield* batch[i]!
              queued--
              // A join storm brings thousands: let this process's beats through between them.
              if (i % 64 === 63) yield* Effect.yieldNow
            }
          }
        }).pipe(Effect.forkScoped)

        let failures = 0
        let lastBeatAt = 0
        let slowest = 0 // the slowest recent interval between our beats
        let epoch: string | undefined
        let generation = 0
        let pendingRelease = 0 // after trouble, when to read again and let go of who did not come back
        let refill = false // after trouble: read everything, letting go of nobody yet
        while (true) {
          // Not until our events arrive: a beat before that could miss the answers to it.
          const redis = link.subscribed(keys.channel) ? link.current() : undefined
          if (redis === undefined) {
            failures++
            const why = link.error()
            yield* sources.report("redis", why === undefined || why === "connecting" ? "connecting" : "down", why)
          } else {
            const { text, changed } = descriptor()
            // An adaptive lease: a member whose beats come late (its process is
            // starved, say in a join storm) asks for a longer one, so it is not
            // reaped alive; a crash is still noticed within the lease last asked.
            // It covers the slowest recent interval, not the last: starvation
            // comes in bursts, and one quick beat between two late ones is no
            // sign that the next will be on time.
            const now = clock.currentTimeMillisUnsafe()
            if (lastBeatAt > 0) slowest = Math.max(now - lastBeatAt, SLOWEST_DECAY * slowest)
            const lease = Math.min(MAX_LEASE_FACTOR * ttl, Math.max(ttl, Math.round(2.2 * slowest)))
            // A late beat (our process stalled): who expired since our last may have stalled with us.
            const since = lastBeatAt > 0 && now - lastBeatAt > 1.1 * heartbeat ? Math.round(now - lastBeatAt) : 0
            lastBeatAt = now
            const beat = yield* Effect.exit(
              redis.eval(scripts.heartbeat)(
                keys,
                sender.instance,
                lease,
                text,
                changed,
                sender.instance,
                returnMillis,
                since,
                spareMillis,
                ttl
              ).pipe(Effect.timeout(timeout))
            )
            if (Exit.isFailure(beat)) {
              if (changed) described = undefined // announce it again when Redis is back
              failures++
              const error = describe(RedisModule, beat.cause)
              // One slow answer is not an outage (a busy process, a busy Redis): down at the second.
              if (failures >= 2) yield* sources.report("redis", "down", error)
              // node-redis gave up on this client (it does after a socket timeout): the link connects afresh.
              if (/closed|ClientClosed/i.test(error)) link.broken()
            } else {
              const [rev, , , redisEpoch] = beat.value
              const first = lastRev < 0
              const restarted = (epoch !== undefined && redisEpoch !== epoch) || (!first && rev < lastRev)
              // A new connection (its subscription new too): events may have been missed.
              const reconnected = generation !== 0 && generation !== link.generation()
              // One late answer is a missed beat, not trouble: events kept flowing on the shared subscription.
              const back = failures >= 2 || restarted || reconnected
              generation = link.generation()
              epoch = redisEpoch
              failures = 0
              if (expectBy > 0 && seen < expectBy) missed = true
              expectBy = expectNext
              if (back && !first) {
                // Back after trouble (Redis away, or restarted empty): everyone
                // registers again within a beat of reconnecting; who has not
                // by the grace's end is let go.
                if (restarted) {
                  // Revisions begin again: what we hold counts from zero.
                  for (const entry of known.values()) entry.rev = 0
                  gone.clear()
                  readRev = 0
                  seen = 0
                }
                refill = true
                pendingRelease = clock.currentTimeMillisUnsafe() + restartGrace
                missed = false
              }
              let viewed = true
              if (first) {
                // The first view is read before the source says it is up: a
                // program that waits for "up" finds the members Redis knows.
                // Without it (Redis froze meanwhile, say), not up yet: the
                // next beat, still the first, reads again.
                viewed = yield* readAll(redis, true)
                if (!viewed) missed = false
              } else if (!reading) {
                const due = pendingRelease > 0 && clock.currentTimeMillisUnsafe() >= pendingRelease
                if (refill) {
                  refill = false
                  yield* startRead(redis, false)
                } else if (missed || due) {
                  missed = false
                  // Within the grace, a read for missed events lets go of nobody.
                  if (due) pendingRelease = 0
                  yield* startRead(redis, pendingRelease === 0)
                }
              }
              if (viewed) {
                // Events up to this revision should have come before the next beat.
                expectNext = rev > seen ? rev : 0
                lastRev = rev
                yield* sources.report("redis", "up")
              }
            }
          }
          // Until the first beat, look again soon: joining should not wait a heartbeat for the link.
          const jitter = yield* Random.nextBetween(0.9, 1.1)
          yield* Effect.sleep(Duration.millis(lastRev < 0 ? Math.min(25, heartbeat) : heartbeat * jitter))
        }
      })
      yield* Effect.forkScoped(session)

      // Leaving: out of the set at once, so every member hears it now (best effort: Redis may be away).
      yield* Effect.addFinalizer(() =>
        Effect.suspend(() => {
          const redis = link.current()
          return redis === undefined ? Effect.void : Effect.ignore(
            redis.eval(scripts.leave)(keys, sender.instance).pipe(Effect.timeout(timeout))
          )
        })
      )
    }))
}
