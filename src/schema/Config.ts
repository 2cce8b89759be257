/**
 * The configuration of a member: one Schema, documented defaults, and named
 * profiles instead of scattered constants.
 */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import { JoinError } from "./Errors.ts"
import { MAX_NAME_BYTES, MAX_TAG_BYTES, MAX_TAGS } from "./Frame.ts"
import { parseCidr } from "../internal/host.ts"
import { ProtocolName } from "./Service.ts"

const DurationInput = Schema.declare(
  (u: unknown): u is Duration.Input =>
    Duration.isDuration(u) || (typeof u === "number" && u >= 0) ||
    (typeof u === "string" && Option.isSome(Duration.fromInput(u as Duration.Input))),
  { expected: "a duration such as \"1 second\", a Duration, or milliseconds" }
)

const isMulticast = /^(22[4-9]|23\d)\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** What a caller may pass to `ClusterLive`; every field is optional but `name` is the usual one. */
export const ClusterConfigInput = Schema.Struct({
  /** Service name; the id is `hostId@name`. Default: the process id. */
  name: Schema.optional(
    Schema.String.check(
      Schema.makeFilter((s: string) => {
        const n = Buffer.byteLength(s)
        return n >= 1 && n <= MAX_NAME_BYTES ? undefined : `must be 1..${MAX_NAME_BYTES} bytes of UTF-8`
      })
    )
  ),
  /** IPv4 multicast group of the cluster. Default 230.230.230.230. */
  address: Schema.optional(Schema.String.check(
    Schema.makeFilter((s: string) => {
      const m = isMulticast.exec(s)
      return m?.slice(2).every((o) => Number(o) <= 255)
        ? undefined
        : "must be an IPv4 multicast address (224.0.0.0 to 239.255.255.255)"
    })
  )),
  /** UDP port of the cluster, shared by every member on a host. Default 23000. */
  port: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))),
  /** How long a service unheard of is kept before it is lost. Default 3 seconds. */
  ttl: Schema.optional(DurationInput),
  /** Interval between heartbeats (with ±10% jitter). Default 1 second. */
  heartbeat: Schema.optional(DurationInput),
  /** Protocols for direct messages, in order of preference. Default `["tcp", "udp"]`. */
  protocols: Schema.optional(Schema.Array(ProtocolName).check(
    Schema.makeFilter((ps: ReadonlyArray<string>) =>
      ps.length === 0 ? "must name at least one protocol" :
      new Set(ps).size !== ps.length ? "must not repeat a protocol" : undefined
    )
  )),
  /** Multicast TTL. 0 (default): this host only, over loopback; above 0: the LAN. */
  remote: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 }))),
  /** With `remote` above 0: the interface (name or IPv4 address) for multicast. Default: the first non-loopback IPv4 interface. */
  interface: Schema.optional(Schema.String.check(Schema.isMinLength(1))),
  /** Host part of the service id (12 hex digits). Default: the first non-loopback MAC address, else a stable machine id. */
  hostId: Schema.optional(Schema.String.check(Schema.isPattern(/^[0-9a-f]{12}$/))),
  /** TCP listening port; 0 (default) picks a free one, which is advertised. */
  tcpPort: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65535 }))),
  /** Largest frame accepted or sent over tcp, in bytes. Default 16 MiB. */
  maxFrame: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1024, maximum: 1024 ** 3 }))),
  /** Tags advertised in every beacon (at most 32, each 1..64 bytes); see `Cluster.updateTags`. */
  tags: Schema.optional(Schema.Array(Schema.String.check(
    Schema.makeFilter((t: string) => {
      const n = Buffer.byteLength(t)
      return n >= 1 && n <= MAX_TAG_BYTES ? undefined : `must be 1..${MAX_TAG_BYTES} bytes`
    })
  )).check(Schema.makeFilter((ts: ReadonlyArray<string>) => ts.length <= MAX_TAGS ? undefined : `at most ${MAX_TAGS} tags`))),
  /** A shared secret: every frame is sealed with AES-256-GCM under a key derived from it (key id 0). */
  secret: Schema.optional(Schema.String.check(Schema.isMinLength(1))),
  /** Several keys for rotation; `primary` (default: the first) seals, all open. */
  keyring: Schema.optional(Schema.Array(Schema.Struct({
    id: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 })),
    secret: Schema.String.check(Schema.isMinLength(1))
  }))),
  primary: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 }))),
  /** Networks (CIDR, e.g. `10.1.0.0/16`) whose members are accepted when `remote` is above 0; empty: any. */
  allow: Schema.optional(Schema.Array(Schema.String.check(
    Schema.makeFilter((c: string) => parseCidr(c) === undefined ? "must be an IPv4 network such as 10.1.0.0/16" : undefined)
  ))),
  /** Serve this member's metrics (Prometheus text) at http://127.0.0.1:<port>/metrics. Default: not served. */
  metricsPort: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))),
  /** Services known at once; more are refused until some leave or expire. Default 10,000. */
  maxServices: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))),
  /** Incoming stream connections (tcp, unix) accepted in all. Default 1024. */
  maxConnections: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))),
  /** Incoming stream connections accepted from one address. Default 64. */
  maxConnectionsPerPeer: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }))),
  /** A connection with no traffic for this long is closed (it reopens when needed). Default 5 minutes. */
  idleTimeout: Schema.optional(DurationInput),
  /** Channels joined besides 0, 1 and 2, which every member is on. */
  channels: Schema.optional(Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65535 })))),
  /** How many received messages and events may wait for a slow subscriber before being dropped (and counted). Default 4096. */
  bufferSize: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 16, maximum: 1 << 20 })))
})
export type ClusterConfigInput = typeof ClusterConfigInput.Encoded

/** A validated configuration with every default filled in. */
export interface ClusterConfig {
  readonly name: string
  readonly address: string
  readonly port: number
  readonly ttl: Duration.Duration
  readonly heartbeat: Duration.Duration
  readonly protocols: ReadonlyArray<ProtocolName>
  readonly remote: number
  readonly interface: string | undefined
  readonly hostId: string | undefined
  readonly tcpPort: number
  readonly maxFrame: number
  readonly bufferSize: number
  readonly channels: ReadonlyArray<number>
  readonly tags: ReadonlyArray<string>
  readonly keyring: ReadonlyArray<{ readonly id: number; readonly secret: string }>
  readonly primary: number | undefined
  readonly allow: ReadonlyArray<string>
  readonly metricsPort: number | undefined
  readonly maxServices: number
  readonly maxConnections: number
  readonly maxConnectionsPerPeer: number
  readonly idleTimeout: Duration.Duration
}

/**
 * Timing profiles. `fast` (the default) detects a dead member in seconds;
 * `tcl` matches the Tcl package (a heartbeat every 120 s, kept for 600 s).
 */
export const Profiles = {
  fast: { heartbeat: Duration.seconds(1), ttl: Duration.seconds(3) },
  tcl: { heartbeat: Duration.seconds(120), ttl: Duration.seconds(600) }
} as const

const formatter = SchemaIssue.makeFormatterStandardSchemaV1()
const decodeInput = Schema.decodeUnknownResult(ClusterConfigInput)

/** Validates a name or a configuration; a bad value is a `JoinError` naming the field. */
export const makeConfig = (input: string | ClusterConfigInput): Result.Result<ClusterConfig, JoinError> => {
  const raw = typeof input === "string" ? { name: input } : input
  const decoded = decodeInput(raw, { onExcessProperty: "error" })
  if (Result.isFailure(decoded)) {
    const first = formatter(decoded.failure.issue).issues[0]
    const field = first?.path?.map(String).join(".")
    return Result.fail(new JoinError({
      reason: "InvalidConfig",
      field,
      message: `invalid configuration${field ? ` field "${field}"` : ""}: ${first?.message ?? "invalid"}`
    }))
  }
  const c = decoded.success
  const heartbeat = c.heartbeat === undefined ? Profiles.fast.heartbeat : Duration.fromInputUnsafe(c.heartbeat)
  const ttl = c.ttl === undefined ? Profiles.fast.ttl : Duration.fromInputUnsafe(c.ttl)
  if (Duration.toMillis(heartbeat) <= 0) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "heartbeat", message: "invalid configuration field \"heartbeat\": must be above zero" }))
  }
  if (Duration.isLessThanOrEqualTo(ttl, heartbeat)) {
    return Result.fail(new JoinError({
      reason: "InvalidConfig",
      field: "ttl",
      message: "invalid configuration field \"ttl\": must be longer than the heartbeat, or every member expires between beacons"
    }))
  }
  if (c.secret !== undefined && c.keyring !== undefined) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "secret", message: "invalid configuration field \"secret\": give a secret or a keyring, not both" }))
  }
  const keyring = c.keyring ?? (c.secret === undefined ? [] : [{ id: 0, secret: c.secret }])
  if (c.primary !== undefined && !keyring.some((k) => k.id === c.primary)) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "primary", message: "invalid configuration field \"primary\": not a key of the keyring" }))
  }
  return Result.succeed({
    keyring,
    primary: c.primary,
    allow: c.allow ?? [],
    metricsPort: c.metricsPort,
    maxServices: c.maxServices ?? 10_000,
    maxConnections: c.maxConnections ?? 1024,
    maxConnectionsPerPeer: c.maxConnectionsPerPeer ?? 64,
    idleTimeout: c.idleTimeout === undefined ? Duration.minutes(5) : Duration.fromInputUnsafe(c.idleTimeout),
    name: c.name ?? String(process.pid),
    address: c.address ?? "230.230.230.230",
    port: c.port ?? 23000,
    ttl,
    heartbeat,
    protocols: c.protocols ?? ["tcp", "udp"],
    remote: c.remote ?? 0,
    interface: c.interface,
    hostId: c.hostId,
    tcpPort: c.tcpPort ?? 0,
    maxFrame: c.maxFrame ?? 16 * 1024 * 1024,
    bufferSize: c.bufferSize ?? 4096,
    channels: c.channels ?? [],
    tags: [...new Set(c.tags ?? [])]
  })
}
