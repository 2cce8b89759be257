/**
 * The failures a caller can act on. Each is a tagged class, matched with
 * `Effect.catchTag`.
 */
import * as Data from "effect/Data"
import type { ProtocolName, Service } from "./Service.ts"

/**
 * Joining failed: the configuration is invalid (`field` names the offending
 * option), the multicast port is taken by a program that does not share it, or
 * the group cannot be joined on the chosen interface.
 */
export class JoinError extends Data.TaggedError("JoinError")<{
  readonly reason: "InvalidConfig" | "AddressInUse" | "NoMulticast" | "NoInterface"
  readonly message: string
  readonly field?: string | undefined
  readonly cause?: unknown
}> {}

/** A hook cancelled a frame. Only that frame is affected. */
export class HookRejected extends Data.TaggedError("HookRejected")<{
  readonly point: string
  readonly reason: string
  readonly cause?: unknown
}> {}

/** The encoded frame does not fit the protocol (a udp datagram holds 65,507 bytes). */
export class FrameTooLarge extends Data.TaggedError("FrameTooLarge")<{
  readonly protocol: ProtocolName
  readonly size: number
  readonly limit: number
}> {
  override get message() {
    return `frame of ${this.size} bytes exceeds the ${this.protocol} limit of ${this.limit}`
  }
}

/** One protocol's attempt to carry a frame to a peer failed (refused, reset, unreachable). */
export class ProtocolFailure extends Data.TaggedError("ProtocolFailure")<{
  readonly protocol: ProtocolName
  readonly message: string
  readonly cause?: unknown
}> {}

/** One attempt of a `sendTo`, in the order tried. */
export interface SendAttempt {
  readonly protocol: ProtocolName
  readonly cause: FrameTooLarge | ProtocolFailure
}

/** Every protocol both sides speak failed for this service; `attempts` says why, in order. */
export class SendFailed extends Data.TaggedError("SendFailed")<{
  readonly service: Service
  readonly attempts: ReadonlyArray<SendAttempt>
}> {
  override get message() {
    const tried = this.attempts.map((a) => `${a.protocol}: ${a.cause.message}`).join("; ")
    return `send to ${this.service.id} failed on every protocol (${tried})`
  }
}

/** A resolve term given to `sendTo` matched no known service. */
export class ServiceNotFound extends Data.TaggedError("ServiceNotFound")<{
  readonly terms: ReadonlyArray<string>
}> {
  override get message() {
    return `no service matches ${this.terms.map((t) => JSON.stringify(t)).join(" ")}`
  }
}

/** A message that cannot go on the wire: an op of 0 or more than 32 bytes, a channel out of range, too many targets. */
export class InvalidMessage extends Data.TaggedError("InvalidMessage")<{
  readonly message: string
}> {}

/** A channel that cannot be joined (out of 0..65535) or left (0, 1 and 2). */
export class ChannelError extends Data.TaggedError("ChannelError")<{
  readonly channel: number
  readonly message: string
}> {}
