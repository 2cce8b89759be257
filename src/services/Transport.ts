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
import { decodeFrame, type Frame, isDecodeFailure, type SenderCache } from "../schema/Frame.ts"
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
  /**
   * Optional fast path: hands the frame over synchronously when that can be
   * done at once (an open, uncongested connection) and says so; false means
   * nothing was sent and `send` must be used.
   */
  readonly sendNow?: (to: Endpoint, frame: Frame) => boolean
}

/**
 * Called by protocols with each received frame's bytes (synchronously, on the
 * socket's callback). `cache` is the link's own (see `SenderCache`). Returns
 * false when the message queue is full: a stream protocol should then pause
 * reading until `whenDrained` calls back; a datagram is dropped and counted.
 */
export type Receive = (bytes: Uint8Array, protocol: ProtocolName, address: string, cache?: SenderCache) => boolean

/** What protocols deliver into: `receive`, and `whenDrained` to resume a paused reader. */
export interface Inlet {
  readonly receive: Receive
  readonly whenDrained: (resume: () => void) => void
}

export class Transport extends Context.Service<Transport, {
  /** Our protocols and ports, in our order of preference: what beacons advertise. */
  readonly advertised: ReadonlyArray<Advertised>
  /** Sends to every member of the group (and loops back to us: callers drop their own frames). */
  readonly multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
  /** Sends directly to one peer over one protocol it advertises. */
  readonly send: (
    protocol: ProtocolName,
    peer: Service,
    frame: Frame
  ) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
  /** The synchronous fast path of `send`: true if the frame was handed over, false to use `send`. */
  readonly sendNow: (protocol: ProtocolName, peer: Service, frame: Frame) => boolean
  /**
   * Waits for, then takes, every queued beacon (heartbeat, probe, answer,
   * leave). Beacons have a queue of their own, so a slow message consumer
   * never delays membership; when it is full, beacons are dropped and counted.
   */
  readonly takeBeacons: Effect.Effect<ReadonlyArray<Inbound>>
  /**
   * Waits for, then takes, every queued message. When the queue is full, tcp
   * readers pause (the sender feels it as backpressure) and datagrams are
   * dropped and counted; taking resumes the paused readers.
   */
  readonly takeMessages: Effect.Effect<ReadonlyArray<Inbound>>
}>()("cluster-comm/Transport") {
  /** Real sockets: udp multicast (always: discovery rides on it) plus the configured direct protocols. */
  static readonly layer = (config: ClusterConfig) =>
    Layer.effect(
      Transport,
      Effect.gen(function*() {
        const inbound = yield* makeInbound(config.bufferSize)
        const udp = yield* UdpProtocol.make(config, inbound.inlet)
        const byName = new Map<ProtocolName, Protocol>([["udp", udp]])
        if (config.protocols.includes("tcp")) byName.set("tcp", yield* TcpProtocol.make(config, inbound.inlet))
        return fromProtocols(config.protocols, byName, udp.multicast, inbound)
      })
    )
}

/** The queues between the sockets and the pipelines. */
export interface InboundQueues {
  readonly inlet: Inlet
  readonly takeBeacons: Effect.Effect<ReadonlyArray<Inbound>>
  readonly takeMessages: Effect.Effect<ReadonlyArray<Inbound>>
}

/**
 * The edge: count, decode once, drop (counted by reason) whatever is not a
 * frame, and queue the rest, beacons and messages apart.
 */
export const makeInbound = (capacity: number): Effect.Effect<InboundQueues, never, Stats | Scope.Scope> =>
  Effect.gen(function*() {
    const stats = yield* Stats
    const beacons = yield* Effect.acquireRelease(Queue.dropping<Inbound>(capacity), Queue.shutdown)
    // Unbounded as a structure, bounded in use: past `capacity` readers pause
    // and datagrams are dropped, so it holds at most one read chunk per paused link beyond it.
    const messages = yield* Effect.acquireRelease(Queue.unbounded<Inbound>(), Queue.shutdown)
    let paused: Array<() => void> = []
    const receive: Receive = (bytes, protocol, address, cache) => {
      stats.frameIn()
      const frame = decodeFrame(bytes, cache)
      if (isDecodeFailure(frame)) {
        stats.drop(frame)
        return true
      }
      if (frame._tag !== "Message" && frame._tag !== "Query" && frame._tag !== "Reply") {
        if (!Queue.offerUnsafe(beacons, { frame, protocol, address })) stats.drop("queue-full")
        return true
      }
      const size = Queue.sizeUnsafe(messages)
      if (size >= capacity && protocol === "udp") {
        stats.drop("queue-full")
        return true
      }
      Queue.offerUnsafe(messages, { frame, protocol, address })
      return size + 1 < capacity
    }
    const resume = Effect.sync(() => {
      if (paused.length === 0) return
      const waiting = paused
      paused = []
      for (const r of waiting) r()
    })
    return {
      inlet: { receive, whenDrained: (r) => void paused.push(r) },
      takeBeacons: Queue.takeAll(beacons),
      takeMessages: Effect.tap(Queue.takeAll(messages), () => resume)
    }
  })

/** A Transport over a set of protocol plug-ins (the live sockets, or an in-memory network). */
export const fromProtocols = (
  preference: ReadonlyArray<ProtocolName>,
  byName: ReadonlyMap<ProtocolName, Protocol>,
  multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>,
  inbound: InboundQueues
): Transport["Service"] => {
  const advertised = preference.flatMap((name) => {
    const p = byName.get(name)
    return p === undefined ? [] : [{ protocol: name, port: p.port }]
  })
  return Transport.of({
    advertised,
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
    sendNow: (name, peer, frame) => {
      const sendNow = byName.get(name)?.sendNow
      if (sendNow === undefined) return false
      const port = peer.protocols.find((p) => p.protocol === name)?.port
      return port !== undefined && sendNow({ address: peer.address, port }, frame)
    },
    takeBeacons: inbound.takeBeacons,
    takeMessages: inbound.takeMessages
  })
}

const noRoute = (protocol: ProtocolName, peer: Service) =>
  new ProtocolFailure({ protocol, message: `${peer.id} does not advertise ${protocol}, or we do not speak it` })
