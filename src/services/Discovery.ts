/**
 * Discovery: the beacons. At join a heartbeat (our protocols and ports) then a
 * probe, which every member answers directly, so a joiner knows a running
 * cluster after one round trip. Then a heartbeat every interval (±10%
 * jitter, so members started together do not beat in step), and a leave when
 * the scope closes, so peers drop us at once instead of waiting for the ttl.
 */
import { Context, Duration, Effect, Layer, Random } from "effect"
import type { Beacon, Frame, Sender } from "../schema/Frame.ts"
import { type Service, serviceId } from "../schema/Service.ts"
import { Registry } from "./Registry.ts"
import { Transport } from "./Transport.ts"

export interface DiscoveryOptions {
  readonly sender: Sender
  readonly heartbeat: Duration.Duration
  /** The address peers see us at (loopback for a host-only member). */
  readonly address: string
}

export class Discovery extends Context.Service<Discovery, {
  /** This member as peers see it. */
  readonly self: Service
  /** Handles a beacon or a leave that passed the drop checks. */
  readonly handle: (frame: Beacon | Extract<Frame, { _tag: "Leave" }>, address: string) => Effect.Effect<void>
  /** Sends a heartbeat now (outside the schedule). */
  readonly beat: Effect.Effect<void>
}>()("cluster-comm/Discovery") {
  static readonly layer = (options: DiscoveryOptions) =>
    Layer.effect(
      Discovery,
      Effect.gen(function*() {
        const transport = yield* Transport
        const registry = yield* Registry
        const { sender } = options
        const protocols = transport.advertised
        const self: Service = {
          id: serviceId(sender.hostId, sender.name),
          name: sender.name,
          hostId: sender.hostId,
          instance: sender.instance,
          address: options.address,
          local: true,
          protocols,
          lastSeen: Date.now()
        }

        // Beacons are best effort: a lost one is made up by the next.
        const beacon = (tag: "Heartbeat" | "Probe") =>
          transport.multicast({ _tag: tag, sender, protocols }).pipe(
            Effect.catch((e) => Effect.logDebug(`${tag} not sent: ${e.message}`))
          )
        const beat = beacon("Heartbeat")

        yield* beat
        yield* beacon("Probe")

        const interval = Duration.toMillis(options.heartbeat)
        yield* Effect.gen(function*() {
          while (true) {
            const jitter = yield* Random.nextBetween(0.9, 1.1)
            yield* Effect.sleep(Duration.millis(interval * jitter))
            yield* beat
          }
        }).pipe(Effect.forkScoped)

        yield* Effect.addFinalizer(() =>
          transport.multicast({ _tag: "Leave", sender }).pipe(
            Effect.catch((e) => Effect.logDebug(`leave not sent: ${e.message}`))
          )
        )

        const handle = (frame: Beacon | Extract<Frame, { _tag: "Leave" }>, address: string): Effect.Effect<void> => {
          if (frame._tag === "Leave") return registry.leave(frame.sender)
          return registry.observe({ sender: frame.sender, address, protocols: frame.protocols }).pipe(
            Effect.flatMap((peer) =>
              frame._tag === "Probe" && peer !== undefined
                ? transport.send("udp", peer, { _tag: "Answer", sender, protocols }).pipe(
                  Effect.catch((e) => Effect.logDebug(`answer to ${peer.id} not sent: ${e.message}`))
                )
                : Effect.void
            )
          )
        }

        return Discovery.of({ self, handle, beat })
      })
    )
}
