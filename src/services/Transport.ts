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
  decodeFrame,
  encodeFrame,
  encodeFrameInto,
  frameSize,
  type Frame,
  isDecodeFailure,
  isTraffic,
  registerProtocolId,
  type Sender
} from "../schema/Frame.ts"
import { isBpacket } from "../schema/Bpacket.ts"
import type { Advertised, ProtocolName, Service } from "../schema/Service.ts"
import { TcpProtocol } from "./protocols/Tcp.ts"
import { UdpProtocol } from "./protocols/Udp.ts"
import { UnixProtocol } from "./protocols/Unix.ts"
import type { Inbound, Inlet, Protocol, ProtocolPlugin, Receive, ReturnPath } from "./Protocol.ts"
import { Keyring, SEAL_OVERHEAD, SEALED_MAGIC } from "./Keyring.ts"
import { Stats } from "./Stats.ts"

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
        const native = fromProtocols(config.protocols, byName, udp.multicast, inbound, localOnly)
        if (!config.tcl) return native
        // The Tcl package's dialect beside ours, loaded only when asked for.
        const { makeTclDialect } = yield* Effect.promise(() => import("./dialects/Tcl.ts"))
        const host = config.remote === 0 ? "127.0.0.1" : "0.0.0.0"
        return yield* makeTclDialect({ config, sender: self, stats, inbound, udp, native, host })
      })
    )
}

/** Handles a control frame on the spot; false when it must be queued instead. */
export type ControlNow = (frame: Frame, address: string, protocol: ProtocolName, viaGroup: boolean, back: ReturnPath | undefined) => boolean

/** The queues between the sockets and the pipelines. */
export interface InboundQueues {
  readonly inlet: Inlet
  readonly takeBeacons: Effect.Effect<ReadonlyArray<Inbound>>
  readonly takeMessages: Effect.Effect<ReadonlyArray<Inbound>>
  readonly handleNow: (handler: ControlNow) => void
  /**
   * A frame decoded elsewhere (another dialect's packet, translated) goes on
   * as a decoded native one would; false when a stream reader should pause.
   */
  readonly admit: (frame: Frame, protocol: ProtocolName, address: string, port: number, viaGroup?: boolean) => boolean
  /** Installs the reader of another dialect's datagrams: bytes starting `C0 8D` go to it, not to the native decoder. */
  readonly handleForeign: (handler: ForeignNow) => void
}

/** Takes another dialect's datagram; returns as `Receive` does. */
export type ForeignNow = (bytes: Uint8Array, protocol: ProtocolName, address: string, port: number) => boolean

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
    let foreign: ForeignNow | undefined
    const receive: Receive = (bytes, protocol, address, cache, port = 0, once, back) => {
      if (foreign !== undefined && isBpacket(bytes)) return foreign(bytes, protocol, address, port)
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
      // The shared group socket passes `once`; a frame without it came to us directly.
      return admit(frame, protocol, address, port, once !== undefined, back)
    }
    const admit = (frame: Frame, protocol: ProtocolName, address: string, port: number, viaGroup = true, back?: ReturnPath): boolean => {
      // Traffic takes the synchronous path only when no message waits before
      // it: nothing overtakes what a peer sent earlier.
      if ((!isTraffic(frame) || Queue.sizeUnsafe(messages) === 0) && controlNow(frame, address, protocol, viaGroup, back)) return true
      if (!isTraffic(frame)) {
        if (!Queue.offerUnsafe(beacons, { frame, protocol, address, port, viaGroup })) stats.drop("queue-full")
        return true
      }
      const size = Queue.sizeUnsafe(messages)
      if (size >= capacity && protocol === "udp") {
        stats.drop("queue-full")
        return true
      }
      Queue.offerUnsafe(messages, back === undefined ? { frame, protocol, address, port, viaGroup } : { frame, protocol, address, port, viaGroup, back })
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
      },
      admit,
      handleForeign: (handler) => {
        foreign = handler
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
      // A loop, not \`find\`: this runs for every message and reply.
      for (const p of peer.protocols) {
        if (p.protocol === name) return sendNow({ address: peer.address, port: p.port, service: peer }, frame)
      }
      return false
    },
    takeBeacons: inbound.takeBeacons,
    takeMessages: inbound.takeMessages,
    handleNow: inbound.handleNow
  })
}

const noRoute = (protocol: ProtocolName, peer: Service) =>
  new ProtocolFailure({ protocol, message: `${peer.id} does not advertise ${protocol}, or we do not speak it` })
