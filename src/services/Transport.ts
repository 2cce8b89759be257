/**
 * Transport: moves frames between members. It owns the sockets (through its
 * protocols), encodes frames on the way out and decodes them once on the way
 * in; everything past it handles typed frames only.
 *
 * Contract: `multicast` is best effort (datagrams may be lost); `send` over
 * tcp is reliable and ordered per peer while the connection lives; over udp it
 * is best effort. A failed `send` says why, so the caller can fall back.
 */
import { Context, Effect, Layer, Queue, type Scope } from "effect"
import type { ClusterConfig } from "../schema/Config.ts"
import { type FrameTooLarge, ProtocolFailure } from "../schema/Errors.ts"
import { decodeFrame, type Frame, isDecodeFailure } from "../schema/Frame.ts"
import type { Advertised, ProtocolName, Service } from "../schema/Service.ts"
import { TcpProtocol } from "./protocols/Tcp.ts"
import { UdpProtocol } from "./protocols/Udp.ts"
import { Stats } from "./Stats.ts"

/** A decoded frame and where it came from. */
export interface Inbound {
  readonly frame: Frame
  readonly protocol: ProtocolName
  readonly address: string
}

/** Where to reach a peer over one protocol. */
export interface Endpoint {
  readonly address: string
  readonly port: number
}

/**
 * A protocol plug-in: what it advertises, how it sends, how big a frame may
 * be. Inbound frames it hands to the `receive` callback given at creation.
 */
export interface Protocol {
  readonly name: ProtocolName
  /** The port peers reach us on, advertised in every beacon. */
  readonly port: number
  readonly maxFrame: number
  readonly send: (to: Endpoint, frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
}

/** Called by protocols with each received frame's bytes (synchronously, on the socket's callback). */
export type Receive = (bytes: Uint8Array, protocol: ProtocolName, address: string) => void

export class Transport extends Context.Service<Transport, {
  /** Our protocols and ports, in our order of preference: what beacons advertise. */
  readonly advertised: ReadonlyArray<Advertised>
  /** Largest frame a protocol carries. */
  readonly maxFrame: (protocol: ProtocolName) => number
  /** Sends to every member of the group (and loops back to us: callers drop their own frames). */
  readonly multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
  /** Sends directly to one peer over one protocol it advertises. */
  readonly send: (
    protocol: ProtocolName,
    peer: Service,
    frame: Frame
  ) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
  /** Decoded frames from every protocol, bounded; when full, new frames are dropped and counted. */
  readonly inbound: Queue.Dequeue<Inbound>
}>()("cluster-comm/Transport") {
  /** Real sockets: udp multicast (always: discovery rides on it) plus the configured direct protocols. */
  static readonly layer = (config: ClusterConfig) =>
    Layer.effect(
      Transport,
      Effect.gen(function*() {
        const { inbound, receive } = yield* makeInbound(config.bufferSize)
        const udp = yield* UdpProtocol.make(config, receive)
        const byName = new Map<ProtocolName, Protocol>([["udp", udp]])
        if (config.protocols.includes("tcp")) byName.set("tcp", yield* TcpProtocol.make(config, receive))
        return fromProtocols(config, byName, udp.multicast, inbound)
      })
    )
}

/**
 * The bounded inbound queue and the edge that fills it: count, decode once,
 * and drop (counted by reason) whatever is not a frame.
 */
export const makeInbound = (capacity: number): Effect.Effect<
  { readonly inbound: Queue.Queue<Inbound>; readonly receive: Receive },
  never,
  Stats | Scope.Scope
> =>
  Effect.gen(function*() {
    const stats = yield* Stats
    const inbound = yield* Effect.acquireRelease(Queue.dropping<Inbound>(capacity * 4), Queue.shutdown)
    const receive: Receive = (bytes, protocol, address) => {
      stats.frameIn()
      const frame = decodeFrame(bytes)
      if (isDecodeFailure(frame)) stats.drop(frame)
      else if (!Queue.offerUnsafe(inbound, { frame, protocol, address })) stats.drop("queue-full")
    }
    return { inbound, receive }
  })

/** A Transport over a set of protocol plug-ins (the live sockets, or an in-memory network). */
export const fromProtocols = (
  config: ClusterConfig,
  byName: ReadonlyMap<ProtocolName, Protocol>,
  multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>,
  inbound: Queue.Dequeue<Inbound>
): Transport["Service"] => {
  const advertised = config.protocols.flatMap((name) => {
    const p = byName.get(name)
    return p === undefined ? [] : [{ protocol: name, port: p.port }]
  })
  return Transport.of({
    advertised,
    maxFrame: (name) => byName.get(name)?.maxFrame ?? 0,
    multicast,
    send: (name, peer, frame) => {
      const protocol = byName.get(name)
      if (protocol === undefined) return Effect.fail(noRoute(name, peer))
      const port = peer.protocols.find((p) => p.protocol === name)?.port
      // A peer we have only heard a message from (no beacon yet) has no udp
      // port: multicast it, the frame's target filter keeps it to that peer.
      if (port === undefined) return name === "udp" ? multicast(frame) : Effect.fail(noRoute(name, peer))
      return protocol.send({ address: peer.address, port }, frame)
    },
    inbound
  })
}

const noRoute = (protocol: ProtocolName, peer: Service) =>
  new ProtocolFailure({ protocol, message: `${peer.id} does not advertise ${protocol}, or we do not speak it` })
