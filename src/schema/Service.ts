/**
 * Member descriptors: what a member knows of a service, the messages it
 * delivers and the membership events it publishes.
 */
import * as Data from "effect/Data"

/**
 * A protocol's name: the built-in `udp` (multicast and unicast datagrams),
 * `tcp` and `unix`, or a plug-in's (lower case letters, digits, dashes, at
 * most 16).
 */
export type ProtocolName = string
/** What a protocol's name must look like. */
export const PROTOCOL_NAME = /^[a-z][a-z0-9-]{0,15}$/

/**
 * Where a member was heard of: the multicast group's beacons, unicast beats
 * with members found through `seeds`, or the Redis registry.
 */
export type SourceName = "multicast" | "seeds" | "redis"

/** A protocol a member speaks and how to reach it there (its port). */
export interface Advertised {
  readonly protocol: ProtocolName
  readonly port: number
}

/**
 * A member of the cluster as seen by another. `id` is `hostId@name`;
 * `instance` changes when the process restarts, so a restart is told apart
 * from the member it replaces. (Its Schema is `Service` in `cluster-comm/schema`.)
 */
export interface Service {
  readonly id: string
  readonly name: string
  readonly hostId: string
  readonly instance: string
  readonly address: string
  readonly local: boolean
  readonly protocols: ReadonlyArray<Advertised>
  readonly tags: ReadonlyArray<string>
  readonly lastSeen: number
  /** The sources that know it now; it is lost when the last of them loses it (or it leaves). */
  readonly sources: ReadonlyArray<SourceName>
  /** True while only a source that is down (Redis away) knows it: kept, not lost, until that source returns. */
  readonly stale: boolean
}

export const serviceId = (hostId: string, name: string): string => `${hostId}@${name}`

const utf8 = new TextDecoder()

/**
 * A message as delivered and as seen by receive hooks. A hook that changes it
 * returns a new value with other `data` (or `op`); `text` always follows `data`.
 */
export class Message {
  readonly op: string
  readonly data: Uint8Array
  readonly from: Service
  readonly protocol: ProtocolName
  readonly channel: number
  constructor(op: string, data: Uint8Array, from: Service, protocol: ProtocolName, channel = 0) {
    this.op = op
    this.data = data
    this.from = from
    this.protocol = protocol
    this.channel = channel
  }
  /** The data read as UTF-8. */
  get text(): string {
    return utf8.decode(this.data)
  }
  /** A copy with some fields changed: the way a hook alters a message. */
  with(change: Partial<Pick<Message, "op" | "from" | "protocol" | "channel">> & { data?: string | Uint8Array }): Message {
    return new Message(
      change.op ?? this.op,
      change.data === undefined ? this.data : toBytes(change.data),
      change.from ?? this.from,
      change.protocol ?? this.protocol,
      change.channel ?? this.channel
    )
  }
}

/** A message on its way out, as seen by send hooks. `targets` is empty for a broadcast. */
export interface Outgoing {
  readonly op: string
  readonly data: Uint8Array
  readonly channel: number
  readonly targets: ReadonlyArray<Service>
  readonly protocol: ProtocolName
}

const utf8Encoder = new TextEncoder()
export const toBytes = (data: string | Uint8Array): Uint8Array =>
  typeof data === "string" ? utf8Encoder.encode(data) : data

/** Which protocol carried a `sendTo` to which service. */
export interface Delivery {
  readonly service: Service
  readonly protocol: ProtocolName
}

/** A service was heard of for the first time. */
export class ServiceFound extends Data.TaggedClass("ServiceFound")<{ readonly service: Service }> {}
/** A service left (it said so) or expired (unheard for `ttl`). */
export class ServiceLost extends Data.TaggedClass("ServiceLost")<{
  readonly service: Service
  readonly why: "left" | "expired"
}> {}
/** A known service changed: new protocols or ports, a new address, or a restart (new instance). */
export class ServiceUpdated extends Data.TaggedClass("ServiceUpdated")<{
  readonly service: Service
  readonly previous: Service
}> {}
/**
 * Two live processes claim one service id. A new instance is first taken for a
 * restart; when the instance it replaced is heard again, both are alive: the
 * newer keeps the id and frames of the older are dropped (counted as `conflict`).
 */
export class ServiceConflict extends Data.TaggedClass("ServiceConflict")<{
  readonly service: Service
  readonly instances: readonly [kept: string, rejected: string]
}> {}

export type ClusterEvent = ServiceFound | ServiceLost | ServiceUpdated | ServiceConflict
