/**
 * `ClusterTest`: members on an in-memory network shared in one process. The
 * same program that runs on `ClusterLive` runs here unchanged; frames still
 * go through the codec, and delay (on the Effect clock, so `TestClock` drives
 * it), loss and refused tcp can be set per network.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redis from "effect/persistence/Redis"
import * as Random from "effect/Random"
import { newInstance } from "../internal/host.ts"
import { type ClusterConfigInput, makeConfig } from "../schema/Config.ts"
import { FrameTooLarge, type JoinError, ProtocolFailure } from "../schema/Errors.ts"
import type { Frame } from "../schema/Frame.ts"
import type { ProtocolName } from "../schema/Service.ts"
import type { Cluster } from "../services/Cluster.ts"
import { MAX_DATAGRAM } from "../services/protocols/Udp.ts"
import type { Protocol, Receive } from "../services/Protocol.ts"
import { fromProtocols, makeInbound, Transport } from "../services/Transport.ts"
import { composeCluster } from "./compose.ts"

export interface MemoryNetworkOptions {
  /** Probability (0..1) that a datagram (udp) is lost. tcp never loses. */
  readonly loss?: number
  /** Delay of every frame. */
  readonly delay?: Duration.Input
}

/** An in-memory network: members, their ports, the multicast group, and faults. */
export class MemoryNetwork {
  /** Probability that a datagram is lost; may be changed while members run. */
  loss: number
  readonly delay: Duration.Duration
  private nextPort = 40000
  private readonly endpoints = new Map<string, Receive>()
  private readonly group = new Set<Receive>()
  private readonly refused = new Set<number>()

  constructor(options: MemoryNetworkOptions = {}) {
    this.loss = options.loss ?? 0
    this.delay = Duration.fromInputUnsafe(options.delay ?? 0)
  }

  static make = (options?: MemoryNetworkOptions) => new MemoryNetwork(options)

  /** Makes tcp connections to `port` fail (refused), as when a member's listener is gone. */
  refuseTcp(port: number): void {
    this.refused.add(port)
  }

  /** @internal */
  attach(receive: Receive) {
    const udp = this.nextPort++
    const tcp = this.nextPort++
    this.endpoints.set(`udp:${udp}`, receive)
    this.endpoints.set(`tcp:${tcp}`, receive)
    this.group.add(receive)
    return {
      udp,
      tcp,
      detach: () => {
        this.endpoints.delete(`udp:${udp}`)
        this.endpoints.delete(`tcp:${tcp}`)
        this.group.delete(receive)
      }
    }
  }

  /** @internal */
  endpoint(protocol: ProtocolName, port: number): Receive | undefined {
    return protocol === "tcp" && this.refused.has(port) ? undefined : this.endpoints.get(`${protocol}:${port}`)
  }

  /** @internal */
  members(): ReadonlyArray<Receive> {
    return [...this.group]
  }
}

const transportOn = (network: MemoryNetwork, protocols: ReadonlyArray<ProtocolName>, address: string, multicast = true) =>
  Layer.effect(
    Transport,
    Effect.gen(function*() {
      const inbound = yield* makeInbound(4096)
      const ports = network.attach(inbound.inlet.receive)
      yield* Effect.addFinalizer(() => Effect.sync(ports.detach))

      // Frames travel as bytes, delayed on the Effect clock and, for udp, lost at random.
      // A multicast passes one `DecodedOnce` to all, as the shared group socket does: that marks it as the group's.
      const carry = (to: ReadonlyArray<Receive>, protocol: ProtocolName, frame: Frame, group = false) =>
        Effect.gen(function*() {
          const bytes = inbound.inlet.encode(frame)
          if (protocol === "udp" && bytes.length > MAX_DATAGRAM) {
            return yield* new FrameTooLarge({ protocol, size: bytes.length, limit: MAX_DATAGRAM })
          }
          const arrive = Effect.sync(() => {
            const once = group ? {} : undefined
            for (const r of to) r(bytes, protocol, address, undefined, ports.udp, once)
          })
          if (protocol === "udp" && network.loss > 0 && (yield* Random.next) < network.loss) return
          if (Duration.isZero(network.delay)) yield* arrive
          // Detached: a frame in flight still arrives after its sender has left.
          else yield* Effect.sleep(network.delay).pipe(Effect.andThen(arrive), Effect.forkDetach)
        })

      const udp: Protocol = {
        name: "udp",
        port: ports.udp,
        maxFrame: MAX_DATAGRAM,
        send: (to, frame) => {
          const target = network.endpoint("udp", to.port)
          return target === undefined ? Effect.void : carry([target], "udp", frame)
        }
      }
      const tcp: Protocol = {
        name: "tcp",
        port: ports.tcp,
        maxFrame: 16 * 1024 * 1024,
        send: (to, frame) => {
          const target = network.endpoint("tcp", to.port)
          return target === undefined
            ? Effect.fail(new ProtocolFailure({ protocol: "tcp", message: "connection refused" }))
            : carry([target], "tcp", frame)
        }
      }
      const byName = new Map<ProtocolName, Protocol>([["udp", udp]])
      if (protocols.includes("tcp")) byName.set("tcp", tcp)
      return fromProtocols(protocols, byName, (frame) => multicast ? carry(network.members(), "udp", frame, true) : Effect.void, inbound)
    })
  )

/**
 * A member on `network`, configured as `ClusterLive` would be. `address` is
 * where its frames appear to come from (default loopback; another address
 * plays a member on another host).
 */
export const ClusterTest = (
  network: MemoryNetwork,
  nameOrConfig: string | ClusterConfigInput = {},
  options: {
    readonly address?: string
    /** A `Redis` service for the Redis source (a fake one on the test clock, or a real one). */
    readonly redis?: Layer.Layer<Redis.Redis, unknown>
  } = {}
): Layer.Layer<Cluster, JoinError> =>
  Layer.unwrap(
    Effect.gen(function*() {
      const config = yield* Effect.fromResult(makeConfig(nameOrConfig))
      const sender = { hostId: config.hostId ?? "00000000abcd", instance: newInstance(), name: config.name }
      const address = options.address ?? "127.0.0.1"
      return composeCluster(config, sender, address, transportOn(network, config.protocols, address, config.multicast), {
        redis: options.redis
      })
    })
  )
