/**
 * The configuration of a member: what a caller may pass, its checks (one per
 * option, shared with the `ClusterConfigInput` Schema of `cluster-comm/schema`),
 * documented defaults, and named profiles instead of scattered constants.
 * Checked by plain code: a member does not load Schema to start.
 */
import { net } from "../internal/builtins.ts"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import { JoinError } from "./Errors.ts"
import { HOST_ID, MAX_NAME_BYTES, MAX_TAG_BYTES, MAX_TAGS } from "./Frame.ts"
import { parseNetwork } from "../internal/networks.ts"
import { PROTOCOL_NAME, type ProtocolName } from "./Service.ts"

/** What a caller may pass to `ClusterLive`; every field is optional but `name` is the usual one. */
export interface ClusterConfigInput {
  /** Service name; the id is `hostId@name`. Default: the process id. */
  readonly name?: string | undefined
  /** IPv4 multicast group of the cluster. Default 230.230.230.230. */
  readonly address?: string | undefined
  /** UDP port of the cluster, shared by every member on a host. Default 23000. */
  readonly port?: number | undefined
  /** How long a service unheard of is kept before it is lost. Default 3 seconds. */
  readonly ttl?: Duration.Input | undefined
  /** Interval between heartbeats (with ±10% jitter). Default 1 second. */
  readonly heartbeat?: Duration.Input | undefined
  /** Protocols for direct messages, in order of preference. Default `["tcp", "udp"]`. */
  readonly protocols?: ReadonlyArray<ProtocolName> | undefined
  /** Multicast TTL. 0 (default): this host only, over loopback; above 0: the LAN. */
  readonly remote?: number | undefined
  /** With `remote` above 0: the interface (name or IPv4 address) for multicast. Default: the first non-loopback IPv4 interface. */
  readonly interface?: string | undefined
  /** Host part of the service id (12 hex digits). Default: the first non-loopback MAC address, else a stable machine id. */
  readonly hostId?: string | undefined
  /** TCP listening port; 0 (default) picks a free one, which is advertised. */
  readonly tcpPort?: number | undefined
  /** Largest frame accepted or sent over tcp, in bytes. Default 16 MiB. */
  readonly maxFrame?: number | undefined
  /** Tags advertised in every beacon (at most 32, each 1..64 bytes); see `Cluster.updateTags`. */
  readonly tags?: ReadonlyArray<string> | undefined
  /** A shared secret: every frame is sealed with AES-256-GCM under a key derived from it (key id 0). */
  readonly secret?: string | undefined
  /** Several keys for rotation; `primary` (default: the first) seals, all open. */
  readonly keyring?: ReadonlyArray<{ readonly id: number; readonly secret: string }> | undefined
  readonly primary?: number | undefined
  /** Networks (CIDR, e.g. `10.1.0.0/16`) whose members are accepted when `remote` is above 0; empty: any. */
  readonly allow?: ReadonlyArray<string> | undefined
  /** Serve this member's metrics (Prometheus text) at http://127.0.0.1:<port>/metrics. Default: not served. */
  readonly metricsPort?: number | undefined
  /** Services known at once; more are refused until some leave or expire. Default 10,000. */
  readonly maxServices?: number | undefined
  /** Incoming stream connections (tcp, unix) accepted in all. Default 1024. */
  readonly maxConnections?: number | undefined
  /** Incoming stream connections accepted from one address. Default 64. */
  readonly maxConnectionsPerPeer?: number | undefined
  /** A connection with no traffic for this long is closed (it reopens when needed). Default 5 minutes. */
  readonly idleTimeout?: Duration.Input | undefined
  /** Channels joined besides 0, 1 and 2, which every member is on. */
  readonly channels?: ReadonlyArray<number> | undefined
  /** How many received messages and events may wait for a slow subscriber before being dropped (and counted). Default 4096. */
  readonly bufferSize?: number | undefined
  /**
   * Also speak the Tcl package's wire format (bpacket v2) on the same group
   * and port, each peer in the dialect it speaks (see docs/tcl.md). Default false.
   */
  readonly tcl?: boolean | undefined
  /** Beacons on the multicast group (the zero-configuration discovery). Default true; false for networks without multicast. */
  readonly multicast?: boolean | undefined
  /**
   * Members to probe by unicast, as `host:port` (the seed's `seedPort`);
   * names are resolved again every poll (A and AAAA), so a DNS name listing
   * every member (a Kubernetes headless service) works as a seed list.
   */
  readonly seeds?: ReadonlyArray<string> | undefined
  /** The fixed udp port this member answers seed probes on (its direct udp socket). Default 0: any free port. */
  readonly seedPort?: number | undefined
  /**
   * Discovery through a Redis server: a `redis://` or `rediss://` URL (user and
   * password in it for ACLs), or `{ url, namespace }` so many clusters can share one Redis.
   */
  readonly redis?: string | RedisOptions | undefined
  /** The address peers beyond the multicast group reach us at. Default: the interface's address. */
  readonly advertise?: string | undefined
}

/** Where the Redis source connects, and the namespace its keys live under. */
export interface RedisOptions {
  readonly url: string
  readonly namespace?: string | undefined
}

/** A seed, parsed: a host name or IP address and the udp port it answers probes on. */
export interface Seed {
  readonly host: string
  readonly port: number
}

/** `host:port`, `[v6]:port` or `v4:port`; a string says what is wrong. */
export const parseSeed = (s: string): Seed | string => {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(s)
  if (m === null) return "must be host:port (an IPv6 address in brackets)"
  const port = Number(m[3])
  if (port < 1 || port > 65535) return "port must be 1 to 65535"
  const host = m[1] ?? m[2]!
  if (m[2] !== undefined && !/^[A-Za-z0-9._-]+$/.test(host)) return "host must be a DNS name or an IP address"
  return { host, port }
}

const redisUrl = (s: string): string | undefined => {
  try {
    const url = new URL(s)
    return url.protocol === "redis:" || url.protocol === "rediss:" ? undefined : "must be a redis:// or rediss:// URL"
  } catch {
    return "must be a redis:// or rediss:// URL"
  }
}

/** Why a value is refused: where inside it (an item's index, a key) and what it must be. */
export interface ConfigProblem {
  readonly path: ReadonlyArray<string | number>
  readonly message: string
}
/** One option's check: undefined when the value is good. */
export type ConfigCheck = (value: unknown) => ConfigProblem | undefined

const problem = (message: string, path: ReadonlyArray<string | number> = []): ConfigProblem => ({ path, message })
const within = (at: string | number, p: ConfigProblem | undefined) => p && problem(p.message, [at, ...p.path])

const integer = (min: number, max: number): ConfigCheck => (v) =>
  typeof v === "number" && Number.isInteger(v) && v >= min && v <= max ? undefined : problem(`must be an integer from ${min} to ${max}`)

const text = (rule: (s: string) => string | undefined = () => undefined): ConfigCheck => (v) => {
  if (typeof v !== "string") return problem("must be a string")
  const wrong = rule(v)
  return wrong === undefined ? undefined : problem(wrong)
}
const nonEmpty = text((s) => s.length > 0 ? undefined : "must not be empty")
const utf8Bytes = (max: number) =>
  text((s) => {
    const n = Buffer.byteLength(s)
    return n >= 1 && n <= max ? undefined : `must be 1..${max} bytes of UTF-8`
  })

const list = (item: ConfigCheck, whole: (xs: ReadonlyArray<unknown>) => string | undefined = () => undefined): ConfigCheck => (v) => {
  if (!Array.isArray(v)) return problem("must be an array")
  for (let i = 0; i < v.length; i++) {
    const wrong = within(i, item(v[i]))
    if (wrong !== undefined) return wrong
  }
  const wrong = whole(v)
  return wrong === undefined ? undefined : problem(wrong)
}

/** An object of exactly these keys; `required` must be present, the rest may be absent or undefined. */
const record = (fields: Readonly<Record<string, ConfigCheck>>, required: ReadonlyArray<string> = []): ConfigCheck => (v) => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return problem("must be an object")
  const o = v as Record<string, unknown>
  for (const key of Object.keys(o)) if (!Object.hasOwn(fields, key)) return problem("is not a known option", [key])
  for (const [key, check] of Object.entries(fields)) {
    if (o[key] === undefined) {
      if (required.includes(key)) return problem("is missing", [key])
      continue
    }
    const wrong = within(key, check(o[key]))
    if (wrong !== undefined) return wrong
  }
  return undefined
}

const duration: ConfigCheck = (v) =>
  Duration.isDuration(v) || (typeof v === "number" && v >= 0) ||
    (typeof v === "string" && Option.isSome(Duration.fromInput(v as Duration.Input)))
    ? undefined
    : problem("must be a duration such as \"1 second\", a Duration, or milliseconds")

const boolean: ConfigCheck = (v) => typeof v === "boolean" ? undefined : problem("must be true or false")

const isMulticast = /^(22[4-9]|23\d)\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** The check of every option, by name. */
export const configChecks = {
  name: utf8Bytes(MAX_NAME_BYTES),
  address: text((s) =>
    isMulticast.exec(s)?.slice(2).every((o) => Number(o) <= 255)
      ? undefined
      : "must be an IPv4 multicast address (224.0.0.0 to 239.255.255.255)"
  ),
  port: integer(1, 65535),
  ttl: duration,
  heartbeat: duration,
  protocols: list(
    text((s) => PROTOCOL_NAME.test(s) ? undefined : "must be a protocol name (a-z, 0-9, -; at most 16)"),
    (ps) => ps.length === 0 ? "must name at least one protocol" : new Set(ps).size !== ps.length ? "must not repeat a protocol" : undefined
  ),
  remote: integer(0, 255),
  interface: nonEmpty,
  hostId: text((s) => HOST_ID.test(s) ? undefined : "must be 12 hex digits (lower case)"),
  tcpPort: integer(0, 65535),
  maxFrame: integer(1024, 1024 ** 3),
  tags: list(utf8Bytes(MAX_TAG_BYTES), (ts) => ts.length <= MAX_TAGS ? undefined : `at most ${MAX_TAGS} tags`),
  secret: nonEmpty,
  keyring: list(record({ id: integer(0, 255), secret: nonEmpty }, ["id", "secret"])),
  primary: integer(0, 255),
  allow: list(text((c) => {
    const network = parseNetwork(c)
    return typeof network === "string" ? `must be an IP network such as 10.1.0.0/16 or fd00::/8 (${network})` : undefined
  })),
  metricsPort: integer(1, 65535),
  maxServices: integer(1, 1_000_000),
  maxConnections: integer(1, 65535),
  maxConnectionsPerPeer: integer(1, 65535),
  idleTimeout: duration,
  channels: list(integer(0, 65535)),
  bufferSize: integer(16, 1 << 20),
  tcl: boolean,
  multicast: boolean,
  seeds: list(text((s) => {
    const seed = parseSeed(s)
    return typeof seed === "string" ? seed : undefined
  })),
  seedPort: integer(0, 65535),
  redis: (v) =>
    typeof v === "string"
      ? text(redisUrl)(v)
      : record({
        url: text(redisUrl),
        namespace: text((s) => /^[^{}\s]{1,64}$/.test(s) ? undefined : "must be 1..64 characters, no braces or spaces")
      }, ["url"])(v),
  advertise: text((s) => net.isIP(s) === 0 ? "must be an IP address" : undefined)
} satisfies Record<keyof ClusterConfigInput, ConfigCheck>

const checkInput = record(configChecks)

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
  readonly tcl: boolean
  readonly multicast: boolean
  readonly seeds: ReadonlyArray<Seed>
  readonly seedPort: number
  readonly redis: { readonly url: string; readonly namespace: string } | undefined
  readonly advertise: string | undefined
  /**
   * Everything stays on this host: multicast with TTL 0 and no seeds or
   * Redis. Then sockets bind loopback; otherwise they are open to peers.
   */
  readonly hostOnly: boolean
}

/**
 * Timing profiles. `fast` (the default) detects a dead member in seconds;
 * `tcl` matches the Tcl package (a heartbeat every 120 s, kept for 600 s).
 */
export const Profiles = {
  fast: { heartbeat: Duration.seconds(1), ttl: Duration.seconds(3) },
  tcl: { heartbeat: Duration.seconds(120), ttl: Duration.seconds(600) }
} as const

/** Validates a name or a configuration; a bad value is a `JoinError` naming the field. */
export const makeConfig = (input: string | ClusterConfigInput): Result.Result<ClusterConfig, JoinError> => {
  const raw = typeof input === "string" ? { name: input } : input
  const wrong = checkInput(raw)
  if (wrong !== undefined) {
    const field = wrong.path.length > 0 ? wrong.path.join(".") : undefined
    return Result.fail(new JoinError({
      reason: "InvalidConfig",
      field,
      message: `invalid configuration${field ? ` field "${field}"` : ""}: ${wrong.message}`
    }))
  }
  const c = raw
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
  if (c.tcl === true && keyring.length > 0) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "tcl", message: "invalid configuration field \"tcl\": the Tcl package cannot seal frames, so tcl excludes a secret or keyring" }))
  }
  if (c.tcl === true && c.multicast === false) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "tcl", message: "invalid configuration field \"tcl\": the Tcl package is found by multicast only, so tcl needs multicast" }))
  }
  if (c.primary !== undefined && !keyring.some((k) => k.id === c.primary)) {
    return Result.fail(new JoinError({ reason: "InvalidConfig", field: "primary", message: "invalid configuration field \"primary\": not a key of the keyring" }))
  }
  const seeds = (c.seeds ?? []).map((s) => parseSeed(s) as Seed)
  const redis = c.redis === undefined ? undefined
    : typeof c.redis === "string" ? { url: c.redis, namespace: "default" }
    : { url: c.redis.url, namespace: c.redis.namespace ?? "default" }
  const remote = c.remote ?? 0
  return Result.succeed({
    multicast: c.multicast ?? true,
    seeds,
    seedPort: c.seedPort ?? 0,
    redis,
    advertise: c.advertise,
    hostOnly: remote === 0 && seeds.length === 0 && redis === undefined && c.seedPort === undefined,
    keyring,
    primary: c.primary,
    allow: c.allow ?? [],
    metricsPort: c.metricsPort,
    maxServices: c.maxServices ?? 10_000,
    tcl: c.tcl ?? false,
    maxConnections: c.maxConnections ?? 1024,
    maxConnectionsPerPeer: c.maxConnectionsPerPeer ?? 64,
    idleTimeout: c.idleTimeout === undefined ? Duration.minutes(5) : Duration.fromInputUnsafe(c.idleTimeout),
    name: c.name ?? String(process.pid),
    address: c.address ?? "230.230.230.230",
    port: c.port ?? 23000,
    ttl,
    heartbeat,
    protocols: c.protocols ?? ["tcp", "udp"],
    remote,
    interface: c.interface,
    hostId: c.hostId,
    tcpPort: c.tcpPort ?? 0,
    maxFrame: c.maxFrame ?? 16 * 1024 * 1024,
    bufferSize: c.bufferSize ?? 4096,
    channels: c.channels ?? [],
    tags: [...new Set(c.tags ?? [])]
  })
}
