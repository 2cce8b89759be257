/**
 * Transport: moves frames between members. It owns the sockets (through its
 * protocols), encodes frames on the way out and decodes them once on the way
 * in; everything past it handles typed frames only.
 *
 * Contract: `multicast` is best effort (datagrams may be lost); `send` over
 * tcp is reliable and ordered per peer while the connection lives; over udp it
 * is best effort. A failed `send` says why, so the caller can fall back.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type { ClusterConfig } from "../schema/Config.ts"
import { type FrameTooLarge, JoinError, ProtocolFailure } from "../schema/Errors.ts"
import {
  type DecodeFailure,
  decodeFrame,
  encodeFrame,
  encodeFrameInto,
  frameSize,
  type Frame,
  isDecodeFailure,
  isTraffic,
  registerProtocolId,
  type Sender,
  type SenderCache
} from "../schema/Frame.ts"
import type { Advertised, ProtocolName, Service } from "../schema/Service.ts"
import { TcpProtocol } from "./protocols/Tcp.ts"
import { UdpProtocol } from "./protocols/Udp.ts"
import { UnixProtocol } from "./protocols/Unix.ts"
import { Keyring, SEAL_OVERHEAD, SEALED_MAGIC } from "./Keyring.ts"
import { Stats } from "./Stats.ts"

/** A decoded frame and where it came from. */
export interface Inbound {
  readonly frame: Frame
  readonly protocol: ProtocolName
  readonly address: string
  /** The sender's port, for datagrams (its own udp port); 0 when unknown. */
  readonly port: number
}

/** Where to reach a peer over one protocol: its address, the port it advertises there, and the peer itself. */
export interface Endpoint {
  readonly address: string
  readonly port: number
  readonly service: Service
}

/**
 * One protocol, opened for one member. Contract:
 * - `port` is what beacons advertise (a number of the protocol's choosing: a
 *   tcp port, a unix socket's id); it may change after `rebuild`.
 * - `send` delivers one frame to a peer or fails with why (`FrameTooLarge`
 *   above `maxFrame`; `ProtocolFailure` otherwise), so the caller can fall back.
 * - Inbound frames go, as bytes, to the `Inlet` the protocol was made with.
 * - Everything it opens belongs to the scope it was made in.
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
  /** Optional: stops accepting (the listener closes; sending still works). */
  readonly close?: Effect.Effect<void>
  /** Optional: opens the listener anew (a new port); returns the port to advertise. */
  readonly rebuild?: Effect.Effect<number, JoinError>
  /** Optional: whether our own listener accepts a connection right now. */
  readonly check?: Effect.Effect<boolean>
}

/** What a protocol plug-in is given when a member opens it. */
export interface ProtocolContext {
  readonly config: ClusterConfig
  readonly inlet: Inlet
  readonly stats: Stats["Service"]
  /** This member: its host id, instance and name. */
  readonly self: Sender
}

/**
 * A protocol plug-in. `tcp`, `udp`'s direct path and `unix` are built this
 * way; a user adds one by passing it to `ClusterLive(config, { protocols })`
 * and naming it in `config.protocols`.
 */
export interface ProtocolPlugin {
  readonly name: ProtocolName
  /** Its id on the wire: 1..15 are the library's (1 tcp, 2 udp, 3 unix), 16..255 are free. */
  readonly id: number
  /** For members on this host only: tried first for local peers, never for remote ones. */
  readonly local?: boolean
  /** Opens the protocol for one member, in that member's scope. */
  readonly make: (context: ProtocolContext) => Effect.Effect<Protocol, JoinError, Scope.Scope>
}

/**
 * Called by protocols with each received frame's bytes (synchronously, on the
 * socket's callback). `cache` is the link's own (see `SenderCache`). Returns
 * false when the message queue is full: a stream protocol should then pause
 * reading until `whenDrained` calls back; a datagram is dropped and counted.
 */
export type Receive = (
  bytes: Uint8Array,
  protocol: ProtocolName,
  address: string,
  cache?: SenderCache,
  port?: number,
  once?: DecodedOnce
) => boolean

/**
 * One datagram that several members of a process receive (their shared group
 * socket): a plain frame is decoded by the first and reused by the rest
 * (frames are immutable values). Sealed frames are opened by each member's own keyring.
 */
export interface DecodedOnce {
  frame?: Frame | DecodeFailure
}

/** What protocols deliver into: `receive`, and `whenDrained` to resume a paused reader. */
export interface Inlet {
  readonly receive: Receive
  readonly whenDrained: (resume: () => void) => void
  /**
   * Encodes a frame for the wire, sealed when the member has a key, leaving
   * `headroom` free bytes in front (for a length prefix).
   */
  readonly encode: (frame: Frame, headroom?: number) => Buffer
  /** How many bytes `encodeInto` writes for this frame (sealed or not). */
  readonly encodedSize: (frame: Frame) => number
  /** `encode`, into `buf` at `at` (room for `encodedSize` bytes): for protocols that reuse their write buffers. */
  readonly encodeInto: (frame: Frame, buf: Buffer, at: number) => void
}

export class Transport extends Context.Service<Transport, {
  /** Our protocols and ports, in our order of preference: what beacons advertise (ports may change on rebuild). */
  readonly advertised: () => ReadonlyArray<Advertised>
  /** Protocols only for peers on this host (unix sockets). */
  readonly localOnly: ReadonlySet<ProtocolName>
  /** The protocols we speak, by name. */
  readonly protocols: ReadonlyMap<ProtocolName, Protocol>
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
  /**
   * Installs the synchronous path, tried on the socket's callback before a
   * frame is queued: true when it handled the frame, false to queue it.
   * Traffic (messages, queries, replies) is offered only while no message
   * waits in the queue, so it never overtakes what came before. Spares a
   * fiber wake-up per beat, and a quiet link's traffic a pass through the queue.
   */
  readonly handleNow: (handler: ControlNow) => void
}>()("cluster-comm/Transport") {
  /**
   * Real sockets: udp multicast (always: discovery rides on it) plus the
   * configured direct protocols, built in (tcp, unix) or given as plug-ins.
   */
  static readonly layer = (config: ClusterConfig, self: Sender, plugins: ReadonlyArray<ProtocolPlugin> = []) =>
    Layer.effect(
      Transport,
      Effect.gen(function*() {
        const stats = yield* Stats
        const inbound = yield* makeInbound(config.bufferSize)
        const known = new Map<string, ProtocolPlugin>([[TcpProtocol.name, TcpProtocol], [UnixProtocol.name, UnixProtocol]])
        for (const p of plugins) known.set(p.name, p)
        const udp = yield* UdpProtocol.make(config, inbound.inlet)
        const byName = new Map<ProtocolName, Protocol>([["udp", udp]])
        const localOnly = new Set<ProtocolName>()
        for (const name of config.protocols) {
          if (name === "udp") continue
          const plugin = known.get(name)
          if (plugin === undefined) {
            return yield* new JoinError({ reason: "InvalidConfig", field: "protocols", message: `unknown protocol "${name}": built in are udp, tcp and unix; others need their plug-in` })
          }
          const problem = registerProtocolId(plugin.name, plugin.id)
          if (problem !== undefined) return yield* new JoinError({ reason: "InvalidConfig", field: "protocols", message: problem })
          if (plugin.local) localOnly.add(name)
          byName.set(name, yield* plugin.make({ config, inlet: inbound.inlet, stats, self }))
        }
        return fromProtocols(config.protocols, byName, udp.multicast, inbound, localOnly)
      })
    )
}

/** Handles a control frame on the spot; false when it must be queued instead. */
export type ControlNow = (frame: Frame, address: string, protocol: ProtocolName) => boolean

/** The queues between the sockets and the pipelines. */
export interface InboundQueues {
  readonly inlet: Inlet
  readonly takeBeacons: Effect.Effect<ReadonlyArray<Inbound>>
  readonly takeMessages: Effect.Effect<ReadonlyArray<Inbound>>
  readonly handleNow: (handler: ControlNow) => void
}

/**
 * The edge: count, decode once, drop (counted by reason) whatever is not a
 * frame, and queue the rest, beacons and messages apart.
 */
export const makeInbound = (capacity: number): Effect.Effect<InboundQueues, never, Stats | Keyring | Scope.Scope> =>
  Effect.gen(function*() {
    const stats = yield* Stats
    const keyring = yield* Keyring
    const beacons = yield* Effect.acquireRelease(Queue.dropping<Inbound>(capacity), Queue.shutdown)
    // Unbounded as a structure, bounded in use: past `capacity` readers pause
    // and datagrams are dropped, so it holds at most one read chunk per paused link beyond it.
    const messages = yield* Effect.acquireRelease(Queue.unbounded<Inbound>(), Queue.shutdown)
    let paused: Array<() => void> = []
    let controlNow: ControlNow = () => false
    const receive: Receive = (bytes, protocol, address, cache, port = 0, once) => {
      stats.frameIn(protocol, bytes.byteLength)
      // Without keys, plain frames go straight to decoding (nothing to open or
      // check for replays); a sealed one is still opened, to be refused as such.
      const sealing = keyring.enabled()
      const opened = sealing || bytes[0] === SEALED_MAGIC ? keyring.open(bytes) : undefined
      if (typeof opened === "string") {
        stats.drop(opened)
        return true
      }
      const frame = opened !== undefined ? decodeFrame(opened.frame, cache)
        : once !== undefined ? (once.frame ??= decodeFrame(bytes, cache))
        : decodeFrame(bytes, cache)
      if (isDecodeFailure(frame)) {
        stats.drop(frame)
        return true
      }
      if (opened !== undefined && sealing && !keyring.fresh(frame.sender.instance, opened.counter)) {
        stats.drop("replayed")
        return true
      }
      // Traffic takes the synchronous path only when no message waits before
      // it: nothing overtakes what a peer sent earlier.
      if ((!isTraffic(frame) || Queue.sizeUnsafe(messages) === 0) && controlNow(frame, address, protocol)) return true
      if (!isTraffic(frame)) {
        if (!Queue.offerUnsafe(beacons, { frame, protocol, address, port })) stats.drop("queue-full")
        return true
      }
      const size = Queue.sizeUnsafe(messages)
      if (size >= capacity && protocol === "udp") {
        stats.drop("queue-full")
        return true
      }
      Queue.offerUnsafe(messages, { frame, protocol, address, port })
      return size + 1 < capacity
    }
    const resume = Effect.sync(() => {
      if (paused.length === 0) return
      const waiting = paused
      paused = []
      for (const r of waiting) r()
    })
    return {
      inlet: {
        receive,
        whenDrained: (r) => void paused.push(r),
        encode: (frame, headroom = 0) =>
          keyring.enabled() ? keyring.seal(encodeFrame(frame), headroom) : encodeFrame(frame, headroom),
        encodedSize: (frame) => frameSize(frame) + (keyring.enabled() ? SEAL_OVERHEAD : 0),
        encodeInto: (frame, buf, at) => {
          if (keyring.enabled()) keyring.seal(encodeFrame(frame), 0).copy(buf, at)
          else encodeFrameInto(frame, buf, at)
        }
      },
      takeBeacons: Queue.takeAll(beacons),
      takeMessages: Effect.tap(Queue.takeAll(messages), () => resume),
      handleNow: (handler) => {
        controlNow = handler
      }
    }
  })

/** A Transport over a set of protocol plug-ins (the live sockets, or an in-memory network). */
export const fromProtocols = (
  preference: ReadonlyArray<ProtocolName>,
  byName: ReadonlyMap<ProtocolName, Protocol>,
  multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>,
  inbound: InboundQueues,
  localOnly: ReadonlySet<ProtocolName> = new Set()
): Transport["Service"] => {
  // Rebuilt each time a port changes; the same array otherwise (peers compare by value).
  let advertised: ReadonlyArray<Advertised> = []
  const current = () => {
    const fresh = preference.flatMap((name) => {
      const p = byName.get(name)
      return p === undefined ? [] : [{ protocol: name, port: p.port }]
    })
    if (fresh.length !== advertised.length || fresh.some((a, i) => a.port !== advertised[i]!.port)) advertised = fresh
    return advertised
  }
  return Transport.of({
    advertised: current,
    localOnly,
    protocols: byName,
    multicast,
    send: (name, peer, frame) => {
      const protocol = byName.get(name)
      if (protocol === undefined) return Effect.fail(noRoute(name, peer))
      const port = peer.protocols.find((p) => p.protocol === name)?.port
      // A peer we have only heard a message from (no beacon yet) has no udp
      // port: multicast it, the frame's target filter keeps it to that peer.
      if (port === undefined) return name === "udp" ? multicast(frame) : Effect.fail(noRoute(name, peer))
      return protocol.send({ address: peer.address, port, service: peer }, frame)
    },
    sendNow: (name, peer, frame) => {
      const sendNow = byName.get(name)?.sendNow
      if (sendNow === undefined) return false
      const port = peer.protocols.find((p) => p.protocol === name)?.port
      return port !== undefined && sendNow({ address: peer.address, port, service: peer }, frame)
    },
    takeBeacons: inbound.takeBeacons,
    takeMessages: inbound.takeMessages,
    handleNow: inbound.handleNow
  })
}

const noRoute = (protocol: ProtocolName, peer: Service) =>
  new ProtocolFailure({ protocol, message: `${peer.id} does not advertise ${protocol}, or we do not speak it` })
