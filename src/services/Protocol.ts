/**
 * The protocol contract: what a protocol (tcp, udp, unix, or a user's plug-in)
 * promises Transport, and what Transport hands a protocol to deliver into.
 * Transport and every protocol import it; neither imports the other.
 */
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { ClusterConfig } from "../schema/Config.ts"
import type { FrameTooLarge, JoinError, ProtocolFailure } from "../schema/Errors.ts"
import type { DecodeFailure, Frame, Sender, SenderCache } from "../schema/Frame.ts"
import type { ProtocolName, Service } from "../schema/Service.ts"
import type { Stats } from "./Stats.ts"

/** A decoded frame and where it came from. */
export interface Inbound {
  readonly frame: Frame
  readonly protocol: ProtocolName
  readonly address: string
  /** The sender's port, for datagrams (its own udp port); 0 when unknown. */
  readonly port: number
  /** It came to the multicast group (not directly to us): which discovery source heard it. */
  readonly viaGroup: boolean
  /** The connection it came on, when that can carry our frames back (stream protocols). */
  readonly back?: ReturnPath
}

/**
 * A connection a peer opened to us, as a way back to it: once its sender is
 * known, our frames to that peer over this protocol may take it instead of a
 * connection of our own (when we have none). A query's reply then comes back
 * on the connection it was asked on (one packet each way, the answer
 * carrying the acknowledgement), and each pair of members needs one
 * connection, not two. Everything to one peer still goes over one connection.
 */
export interface ReturnPath {
  /** Frames from `peer` came on this connection: it may carry ours to it. */
  readonly adopt: (peer: Service) => void
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
 * socket's callback). `cache` is the link's own (see `SenderCache`); `back`,
 * the connection as a way back to the sender, when it can be one. Returns
 * false when the message queue is full: a stream protocol should then pause
 * reading until `whenDrained` calls back; a datagram is dropped and counted.
 */
export type Receive = (
  bytes: Uint8Array,
  protocol: ProtocolName,
  address: string,
  cache?: SenderCache,
  port?: number,
  once?: DecodedOnce,
  back?: ReturnPath
) => boolean

/**
 * One datagram that several members of a process receive (their shared group
 * socket): a plain frame is decoded by the first and reused by the rest
 * (frames are immutable values). Sealed frames are opened by each member's own keyring.
 * Given only for datagrams to the multicast group: its presence says so.
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
