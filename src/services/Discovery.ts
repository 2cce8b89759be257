/**
 * Discovery: the beacons. At join a heartbeat (our protocols and ports) then a
 * probe, which every member answers directly, so a joiner knows a running
 * cluster after one round trip. Then a heartbeat every interval (±10%
 * jitter, so members started together do not beat in step), and a leave when
 * the scope closes, so peers drop us at once instead of waiting for the ttl.
 * Members the group does not reach (found through seeds) get the same beats
 * and leave by unicast.
 */
import { net } from "../internal/builtins.ts"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Scope from "effect/Scope"
import { type Beacon, type Frame, MAX_PEERS, type Sender } from "../schema/Frame.ts"
import { type Service, serviceId, type SourceName } from "../schema/Service.ts"
import { applyTagChanges, type TagChange, TagError } from "../schema/Tags.ts"
import { Registry } from "./Registry.ts"
import { Transport } from "./Transport.ts"

/**
 * A gate that opens for a key at most once per `interval` ms, remembering at
 * most 4,096 keys (then it forgets them all: bounded, never blocking for good).
 */
const oncePer = (interval: number) => {
  const last = new Map<string, number>()
  return (key: string): boolean => {
    const now = Date.now()
    if (now - (last.get(key) ?? 0) < interval) return false
    if (last.size >= 4096) last.clear()
    last.set(key, now)
    return true
  }
}

/** The services seeds know that the group does not reach, from the registry's cached list (remembered per list). */
const seededMemo = new WeakMap<ReadonlyArray<Service>, ReadonlyArray<Service>>()
const seededOnly = (beyond: ReadonlyArray<Service>): ReadonlyArray<Service> => {
  let peers = seededMemo.get(beyond)
  if (peers === undefined) {
    peers = beyond.filter((s) => s.sources.includes("seeds"))
    seededMemo.set(beyond, peers)
  }
  return peers
}

/** A udp endpoint as the service Transport sends to: only its address and port are known. */
const endpoint = (address: string, port: number, instance = ""): Service => ({
  id: "",
  name: "",
  hostId: "",
  instance,
  address,
  local: false,
  protocols: [{ protocol: "udp", port }],
  tags: [],
  lastSeen: 0,
  sources: [],
  stale: false
})

/** The frames Discovery handles. */
export type Control = Beacon | Extract<Frame, { _tag: "Leave" | "Ping" | "Repair" | "Beat" | "Peers" }>

export interface DiscoveryOptions {
  readonly sender: Sender
  readonly tags: ReadonlyArray<string>
  readonly heartbeat: Duration.Duration
  /** The address peers see us at (loopback for a host-only member). */
  readonly address: string
  /** Whether the multicast group is on: without it, an answer can only come from a unicast probe. */
  readonly multicast: boolean
}

export class Discovery extends Context.Service<Discovery, {
  /** This member as peers see it (its tags as of now). */
  readonly self: () => Service
  /**
   * Changes our tags; peers hear of it at once in a heartbeat (several changes
   * in one tick go out in one heartbeat).
   */
  readonly updateTags: (changes: ReadonlyArray<TagChange>) => Effect.Effect<ReadonlyArray<string>, TagError>
  /** Handles a beacon, a leave or a ping that passed the drop checks; `viaGroup` when it came to the multicast group. */
  readonly handle: (frame: Control, address: string, port: number, viaGroup: boolean) => Effect.Effect<void>
  /** Sends our descriptor as a probe straight to a udp endpoint (a seed): it answers, and we know each other. */
  readonly probe: (address: string, port: number) => Effect.Effect<void>
  /** The descriptor version: it moves whenever our protocols, ports or tags do. */
  readonly version: () => number
  /** Where Peers frames go (the seeds source probes the endpoints it does not know yet). */
  readonly onPeers: (handler: (endpoints: ReadonlyArray<{ readonly address: string; readonly port: number }>) => Effect.Effect<void>) => void
  /**
   * We could not reach `peer`: tell the cluster (a ping, at most once per
   * heartbeat per peer), so every member gives it two heartbeats to show it is alive.
   */
  readonly ping: (peer: Service) => Effect.Effect<void>
  /**
   * `peer` was reached only by `working` after `failed` protocols failed: tell
   * it (at most once per heartbeat), so it can check and rebuild those listeners.
   */
  readonly repair: (peer: Service, failed: ReadonlyArray<string>, working: string) => Effect.Effect<void>
}>()("cluster-comm/Discovery") {
  static readonly layer = (options: DiscoveryOptions) =>
    Layer.effect(
      Discovery,
      Effect.gen(function*() {
        const transport = yield* Transport
        const registry = yield* Registry
        const { sender } = options
        let tags = options.tags
        const self = (): Service => ({
          id: serviceId(sender.hostId, sender.name),
          name: sender.name,
          hostId: sender.hostId,
          instance: sender.instance,
          address: options.address,
          local: true,
          protocols: transport.advertised(),
          tags,
          lastSeen: Date.now(),
          sources: [],
          stale: false
        })

        // The descriptor version: it moves whenever protocols, ports or tags do,
        // so peers know from a 20-byte beat whether what they hold is current.
        let version = 1
        let described = transport.advertised()
        const currentVersion = () => {
          const now = transport.advertised()
          if (now !== described) {
            described = now
            version = (version % 65535) + 1
          }
          return version
        }
        const descriptor = <T extends "Heartbeat" | "Probe" | "Answer">(tag: T) => ({
          _tag: tag,
          sender,
          protocols: transport.advertised(),
          tags,
          version: currentVersion()
        })

        // Beacons are best effort: a lost one is made up by the next.
        // Suspended: each carries the descriptor of the moment it is sent.
        const beacon = (tag: "Heartbeat" | "Probe") =>
          Effect.suspend(() => transport.multicast(descriptor(tag))).pipe(
            Effect.catch((e) => Effect.logDebug(`${tag} not sent: ${e.message}`))
          )
        /** The full descriptor, at once: at join, and whenever it changes. */
        const announce = beacon("Heartbeat")
        /** The periodic beat: 20 bytes, who and which version. */
        const beat = Effect.suspend(() => transport.multicast({ _tag: "Beat", sender, version: currentVersion() })).pipe(
          Effect.catch((e) => Effect.logDebug(`beat not sent: ${e.message}`))
        )

        // The probe carries our full descriptor: it announces us and asks
        // everyone at once (one multicast, which on one host wakes every member).
        yield* beacon("Probe")

        const interval = Duration.toMillis(options.heartbeat)
        const scope = yield* Scope.Scope
        /** A frame to each member found through seeds that the group does not reach. */
        const toSeeded = (frame: () => Frame, what: string) =>
          Effect.suspend(() => {
            const peers = seededOnly(registry.beyondGroup())
            if (peers.length === 0) return Effect.void
            return Effect.forEach(peers, (peer) =>
              transport.send("udp", peer, frame()).pipe(
                Effect.catch((e) => Effect.logDebug(`${what} to ${peer.id} not sent: ${e.message}`))
              ), { discard: true })
          })
        yield* Effect.gen(function*() {
          while (true) {
            const jitter = yield* Random.nextBetween(0.9, 1.1)
            yield* Effect.sleep(Duration.millis(interval * jitter))
            yield* beat
            yield* toSeeded(() => ({ _tag: "Beat", sender, version: currentVersion() }), "beat")
          }
        }).pipe(Effect.forkScoped)

        yield* Effect.addFinalizer(() =>
          transport.multicast({ _tag: "Leave", sender }).pipe(
            Effect.catch((e) => Effect.logDebug(`leave not sent: ${e.message}`)),
            Effect.andThen(toSeeded(() => ({ _tag: "Leave", sender }), "leave"))
          )
        )

        // Answers come to our own socket, to a multicast probe or a unicast one;
        // those from endpoints we probed directly (seeds) are the seeds' (bounded).
        const probedDirectly = new Set<string>()
        const sourceOf = (frame: Control, address: string, port: number, viaGroup: boolean): SourceName =>
          viaGroup ? "multicast"
          : frame._tag === "Answer" && options.multicast && !probedDirectly.has(`${address}:${port}`) ? "multicast"
          : "seeds"
        const probe = (address: string, port: number) =>
          Effect.suspend(() => {
            if (probedDirectly.size >= 4096) probedDirectly.clear()
            probedDirectly.add(`${address}:${port}`)
            return transport.send("udp", endpoint(address, port), descriptor("Probe")).pipe(
              Effect.catch((e) => Effect.logDebug(`probe to ${address}:${port} not sent: ${e.message}`))
            )
          })

        const selfId = serviceId(sender.hostId, sender.name)
        // A pinged service has two heartbeats to show it is alive.
        const window = Duration.millis(2 * interval)
        let answerPending = false
        const handle = (frame: Control, address: string, port: number, viaGroup: boolean): Effect.Effect<void> => {
          if (frame._tag === "Leave") return registry.leave(frame.sender)
          if (frame._tag === "Peers") {
            // Only from a member we already know at that address: no stranger makes us probe anywhere.
            const from = registry.get(serviceId(frame.sender.hostId, frame.sender.name))
            return viaGroup || from?.instance !== frame.sender.instance || from.address !== address
              ? Effect.void
              : peersHandler(frame.endpoints)
          }
          if (frame._tag === "Repair") return repairOwn(frame.protocols)
          if (frame._tag === "Ping") {
            if (frame.target !== selfId) {
              registry.suspect(frame.target, window)
              return Effect.void
            }
            // We are alive: beat now, after a short random delay so that many
            // members pinged at once do not answer in one burst.
            if (answerPending) return Effect.void
            answerPending = true
            return Random.nextBetween(0, Math.min(50, interval / 4)).pipe(
              Effect.flatMap((ms) => Effect.sleep(Duration.millis(ms))),
              Effect.andThen(Effect.sync(() => {
                answerPending = false
              })),
              Effect.andThen(announce),
              Effect.forkIn(scope),
              Effect.asVoid
            )
          }
          if (frame._tag === "Beat") {
            // Beats that `beatNow` could settle never get here (see Cluster's handleNow).
            return registry.beat(frame.sender, frame.version, address, sourceOf(frame, address, port, viaGroup)).pipe(
              Effect.flatMap((known) => known === undefined ? askFor(frame.sender.instance, address, port) : Effect.void)
            )
          }
          return registry.observe({
            sender: frame.sender,
            address,
            protocols: frame.protocols,
            tags: frame.tags,
            version: frame.version,
            source: sourceOf(frame, address, port, viaGroup)
          }).pipe(
            Effect.flatMap((peer) =>
              frame._tag === "Probe" && peer !== undefined
                ? transport.send("udp", peer, descriptor("Answer")).pipe(
                  Effect.andThen(viaGroup ? Effect.void : introduce(peer)),
                  Effect.catch((e) => Effect.logDebug(`answer to ${peer.id} not sent: ${e.message}`))
                )
                : Effect.void
            )
          )
        }

        // A beat from an instance we do not know, or at another version: ask
        // it alone (a probe to the beat's own port) for its descriptor; once
        // per heartbeat per instance, and never more than 4,096 remembered.
        const mayAsk = oncePer(interval)
        const askFor = (instance: string, address: string, port: number) =>
          Effect.suspend(() => {
            if (port === 0 || !mayAsk(instance)) return Effect.void
            return transport.send("udp", endpoint(address, port, instance), descriptor("Probe")).pipe(
              Effect.catch((e) => Effect.logDebug(`probe to ${address}:${port} not sent: ${e.message}`))
            )
          })

        let beatPending = false
        const updateTags = (changes: ReadonlyArray<TagChange>) =>
          Effect.suspend(() => {
            const next = applyTagChanges(tags, changes)
            if (next instanceof TagError) return Effect.fail(next)
            const changed = next.length !== tags.length || next.some((t, i) => t !== tags[i])
            tags = next
            if (changed) version = (version % 65535) + 1
            if (!changed || beatPending) return Effect.succeed(next)
            // One heartbeat for every change made before the next tick.
            beatPending = true
            return Effect.yieldNow.pipe(
              Effect.andThen(Effect.sync(() => {
                beatPending = false
              })),
              Effect.andThen(announce),
              Effect.forkIn(scope),
              Effect.as(next)
            )
          })

        const mayPing = oncePer(interval)
        const ping = (peer: Service) =>
          Effect.suspend(() => {
            if (!mayPing(peer.id)) return Effect.void
            registry.suspect(peer.id, window)
            return transport.multicast({ _tag: "Ping", sender, target: peer.id }).pipe(
              Effect.catch((e) => Effect.logDebug(`ping for ${peer.id} not sent: ${e.message}`))
            )
          })

        const mayNotify = oncePer(interval)
        const repair = (peer: Service, failed: ReadonlyArray<string>, working: string) =>
          Effect.suspend(() => {
            if (!mayNotify(`${peer.id}/${failed.join(",")}`)) return Effect.void
            return transport.send(working, peer, { _tag: "Repair", sender, protocols: failed }).pipe(
              Effect.catch((e) => Effect.logDebug(`repair notice to ${peer.id} not sent: ${e.message}`))
            )
          })

        // A peer says some of our listeners failed it. Check each ourselves (a
        // notice proves nothing), rebuild what is really broken, and beat so
        // everyone learns the new ports. At most one rebuild per heartbeat.
        const mayRebuild = oncePer(interval)
        const repairOwn = (names: ReadonlyArray<string>) =>
          Effect.forEach(names, (name) => {
            const protocol = transport.protocols.get(name)
            if (protocol?.check === undefined || protocol.rebuild === undefined) return Effect.succeed(false)
            const rebuild = protocol.rebuild
            return protocol.check.pipe(
              Effect.flatMap((works) => {
                if (works || !mayRebuild(name)) return Effect.succeed(false)
                return rebuild.pipe(
                  Effect.tap((port) => Effect.logInfo(`${name} listener rebuilt on port ${port} after a peer could not reach it`)),
                  Effect.as(true),
                  Effect.catch((e) => Effect.logWarning(`${name} listener could not be rebuilt: ${e.message}`).pipe(Effect.as(false)))
                )
              })
            )
          }).pipe(
            Effect.flatMap((rebuilt) => rebuilt.some(Boolean) ? announce : Effect.void),
            Effect.forkIn(scope),
            Effect.asVoid
          )

        // A member that probed us directly (we are its seed) hears where the
        // others beyond the group are, so one seed is enough to find them all.
        let peersHandler = (_: ReadonlyArray<{ readonly address: string; readonly port: number }>): Effect.Effect<void> => Effect.void
        const introduce = (prober: Service) =>
          Effect.suspend(() => {
            const endpoints = seededOnly(registry.beyondGroup()).flatMap((s) => {
              const udp = s.protocols.find((p) => p.protocol === "udp")
              return s.id === prober.id || udp === undefined || !net.isIPv4(s.address) ? [] : [{ address: s.address, port: udp.port }]
            })
            if (endpoints.length === 0) return Effect.void
            const frames: Array<Frame> = []
            for (let i = 0; i < endpoints.length; i += MAX_PEERS) {
              frames.push({ _tag: "Peers", sender, endpoints: endpoints.slice(i, i + MAX_PEERS) })
            }
            return Effect.forEach(frames, (frame) => transport.send("udp", prober, frame), { discard: true })
          })

        return Discovery.of({
          self,
          handle,
          updateTags,
          ping,
          repair,
          probe,
          version: currentVersion,
          onPeers: (handler) => {
            peersHandler = handler
          }
        })
      })
    )
}
