/**
 * `cluster-comm/schema`: the Schemas of what crosses the network and of the
 * configuration, for code that validates, converts or documents them (JSON
 * Schema, arbitraries, decoding a frame captured off the wire).
 *
 * A member does not need them: frames go through the plain codec of Frame.ts
 * and the configuration through the checks of Config.ts, which these Schemas
 * reuse. Kept out of the main entry because loading Schema roughly doubles
 * what a member costs to start.
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import * as SchemaTransformation from "effect/SchemaTransformation"
import { type ClusterConfigInput as ConfigInput, type ConfigCheck, configChecks } from "./Config.ts"
import * as F from "./Frame.ts"
import * as S from "./Service.ts"

/** A protocol's name: lower case letters, digits and dashes, at most 16. */
export const ProtocolName = Schema.String.check(Schema.isPattern(S.PROTOCOL_NAME))

/** A protocol a member speaks and how to reach it there (its port). */
export const Advertised = Schema.Struct({
  protocol: ProtocolName,
  port: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65535 }))
})

/** A member of the cluster as seen by another. */
export const Service = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  hostId: Schema.String,
  instance: Schema.String,
  address: Schema.String,
  local: Schema.Boolean,
  protocols: Schema.Array(Advertised),
  tags: Schema.Array(Schema.String),
  lastSeen: Schema.Number,
  sources: Schema.Array(Schema.Literals(["multicast", "seeds", "redis"])),
  stale: Schema.Boolean
})

const HostId = Schema.String.check(Schema.isPattern(F.HOST_ID))
const Instance = Schema.String.check(Schema.isPattern(F.INSTANCE_ID))
const NonEmpty = Schema.String.check(Schema.isMinLength(1))

/** Who sent a frame. */
export const Sender = Schema.Struct({ hostId: HostId, instance: Instance, name: NonEmpty })

const beaconFields = {
  sender: Sender,
  protocols: Schema.Array(Advertised),
  tags: Schema.Array(Schema.String),
  version: Schema.Int
}
export const Heartbeat = Schema.TaggedStruct("Heartbeat", beaconFields)
export const Probe = Schema.TaggedStruct("Probe", beaconFields)
export const Answer = Schema.TaggedStruct("Answer", beaconFields)
export const Leave = Schema.TaggedStruct("Leave", { sender: Sender })
const messageFields = {
  sender: Sender,
  op: NonEmpty,
  channel: Schema.Int,
  targets: Schema.Array(Schema.String),
  data: Schema.Uint8Array
}
export const MessageFrame = Schema.TaggedStruct("Message", messageFields)
export const MessagesFrame = Schema.TaggedStruct("Messages", {
  sender: Sender,
  op: NonEmpty,
  channel: Schema.Int,
  items: Schema.Array(Schema.Uint8Array)
})
/** A beat names no one: its sender's name is empty. */
export const Beat = Schema.TaggedStruct("Beat", {
  sender: Schema.Struct({ hostId: HostId, instance: Instance, name: Schema.String }),
  version: Schema.Int
})
export const QueryFrame = Schema.TaggedStruct("Query", { ...messageFields, id: Schema.Int })
export const ReplyFrame = Schema.TaggedStruct("Reply", {
  sender: Sender,
  id: Schema.Int,
  ok: Schema.Boolean,
  data: Schema.Uint8Array
})
export const Ping = Schema.TaggedStruct("Ping", { sender: Sender, target: Schema.String })
export const Repair = Schema.TaggedStruct("Repair", { sender: Sender, protocols: Schema.Array(Schema.String) })
export const Peers = Schema.TaggedStruct("Peers", {
  sender: Sender,
  endpoints: Schema.Array(Schema.Struct({ address: Schema.String, port: Schema.Number }))
})

/** Every frame on the wire, as a typed value. */
export const Frame = Schema.Union([Heartbeat, Probe, Answer, Leave, MessageFrame, QueryFrame, ReplyFrame, Ping, Repair, Beat, MessagesFrame, Peers])

/**
 * The codec as a Schema: bytes to a typed frame, each malformed input a
 * typed decode failure naming its reason; encoding checks the frame's limits.
 */
export const FrameFromBytes = Schema.Uint8Array.pipe(
  Schema.decodeTo(
    Frame,
    SchemaTransformation.transformEffect({
      decode: (bytes: Uint8Array) => {
        const result = F.decodeFrame(bytes)
        return F.isDecodeFailure(result)
          ? Effect.fail(new SchemaIssue.InvalidValue({ message: result }, bytes))
          : Effect.succeed(result)
      },
      encode: (frame: F.Frame) => {
        const problem = F.checkFrame(frame)
        return problem === undefined
          ? Effect.succeed(new Uint8Array(F.encodeFrame(frame)))
          : Effect.fail(new SchemaIssue.InvalidValue({ message: problem }, frame))
      }
    })
  )
)

/** An option of the configuration: its type, refined by the same check `makeConfig` runs. */
const option = <S extends Schema.Top>(schema: S, check: ConfigCheck) =>
  Schema.optional(schema.check(Schema.makeFilter((value: unknown) => {
    const wrong = check(value)
    return wrong === undefined ? undefined : { path: wrong.path, issue: wrong.message }
  })))

const DurationInput = Schema.declare(
  (u: unknown): u is Duration.Input => configChecks.ttl(u) === undefined,
  { expected: "a duration such as \"1 second\", a Duration, or milliseconds" }
)

/**
 * What a caller may pass to `ClusterLive`, as a Schema (decode with
 * `onExcessProperty: "error"` to refuse unknown options, as `makeConfig` does).
 */
export const ClusterConfigInput = Schema.Struct({
  name: option(Schema.String, configChecks.name),
  address: option(Schema.String, configChecks.address),
  port: option(Schema.Number, configChecks.port),
  ttl: option(DurationInput, configChecks.ttl),
  heartbeat: option(DurationInput, configChecks.heartbeat),
  protocols: option(Schema.Array(Schema.String), configChecks.protocols),
  remote: option(Schema.Number, configChecks.remote),
  interface: option(Schema.String, configChecks.interface),
  hostId: option(Schema.String, configChecks.hostId),
  tcpPort: option(Schema.Number, configChecks.tcpPort),
  maxFrame: option(Schema.Number, configChecks.maxFrame),
  tags: option(Schema.Array(Schema.String), configChecks.tags),
  secret: option(Schema.String, configChecks.secret),
  keyring: option(Schema.Array(Schema.Struct({ id: Schema.Number, secret: Schema.String })), configChecks.keyring),
  primary: option(Schema.Number, configChecks.primary),
  allow: option(Schema.Array(Schema.String), configChecks.allow),
  metricsPort: option(Schema.Number, configChecks.metricsPort),
  maxServices: option(Schema.Number, configChecks.maxServices),
  maxConnections: option(Schema.Number, configChecks.maxConnections),
  maxConnectionsPerPeer: option(Schema.Number, configChecks.maxConnectionsPerPeer),
  idleTimeout: option(DurationInput, configChecks.idleTimeout),
  channels: option(Schema.Array(Schema.Number), configChecks.channels),
  bufferSize: option(Schema.Number, configChecks.bufferSize),
  tcl: option(Schema.Boolean, configChecks.tcl),
  multicast: option(Schema.Boolean, configChecks.multicast),
  seeds: option(Schema.Array(Schema.String), configChecks.seeds),
  seedPort: option(Schema.Number, configChecks.seedPort),
  redis: option(
    Schema.Union([Schema.String, Schema.Struct({ url: Schema.String, namespace: Schema.optional(Schema.String) })]),
    configChecks.redis
  ),
  advertise: option(Schema.String, configChecks.advertise)
})

// Each Schema describes exactly the plain type the library uses: a change to
// one without the other fails the type check here.
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false
const same = <A, B>(_: Same<A, B>) => undefined
same<typeof Service.Type, S.Service>(true)
same<typeof Advertised.Type, S.Advertised>(true)
same<typeof Frame.Type, F.Frame>(true)
same<typeof Sender.Type, F.Sender>(true)
same<typeof ClusterConfigInput.Encoded, ConfigInput>(true)
same<typeof ClusterConfigInput.Type, ConfigInput>(true)
