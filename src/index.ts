/**
 * cluster-comm: zero-configuration discovery and messaging between processes
 * on one host and across machines, on Effect.
 *
 * The Schemas of frames, descriptors and the configuration are in
 * `cluster-comm/schema`, so that starting a member does not load Schema.
 */
export { ClusterLive, ClusterServices, type LiveOptions } from "./layers/ClusterLive.ts"
export { ClusterTest, MemoryNetwork, type MemoryNetworkOptions } from "./layers/ClusterTest.ts"
export { type ClusterConfig, type ClusterConfigInput, makeConfig, Profiles, type RedisOptions } from "./schema/Config.ts"
export {
  ChannelError,
  FrameTooLarge,
  HookRejected,
  InvalidMessage,
  JoinError,
  ProtocolFailure,
  type SendAttempt,
  SendFailed,
  ServiceNotFound
} from "./schema/Errors.ts"
export {
  checkFrame,
  type DecodeFailure,
  decodeFrame,
  encodeFrame,
  type Frame,
  frameSize
} from "./schema/Frame.ts"
export {
  type Bpacket,
  type BpacketFailure,
  type BpacketField,
  bpacketLength,
  BpacketType,
  type BpacketValue,
  decodeBpacket,
  encodeBpacket
} from "./schema/Bpacket.ts"
export { type Clause, compileQuery, InvalidQuery, type Matching, termsOf } from "./schema/Resolver.ts"
export {
  QueryDone,
  QueryError,
  type QueryEvent,
  type QueryOptions,
  QueryResponse,
  type QueryResult,
  QueryTimeout
} from "./schema/Query.ts"
export { applyTagChanges, type TagChange, TagError } from "./schema/Tags.ts"
export {
  type Advertised,
  type ClusterEvent,
  type Delivery,
  Message,
  type Outgoing,
  type ProtocolName,
  type Service,
  ServiceConflict,
  ServiceFound,
  serviceId,
  ServiceLost,
  ServiceUpdated,
  type SourceName
} from "./schema/Service.ts"
export {
  type Channels,
  Cluster,
  type ClusterShape,
  type Data,
  FIXED_CHANNELS,
  type SendOptions,
  SYSTEM_CHANNEL,
  type Targets
} from "./services/Cluster.ts"
export { Discovery } from "./services/Discovery.ts"
export { type Direction, type Hook, HookPoint, Hooks } from "./services/Hooks.ts"
export {
  deriveKey,
  Keyring,
  KeyringError,
  type KeySpec,
  type OpenFailure,
  SEAL_OVERHEAD
} from "./services/Keyring.ts"
export { Registry, type Sighting } from "./services/Registry.ts"
export { Sources, type SourceStatus } from "./services/Sources.ts"
export { type DropReason, Stats, type StatsSnapshot } from "./services/Stats.ts"
export { socketDir } from "./services/protocols/Unix.ts"
export type {
  Endpoint,
  Inbound,
  Inlet,
  Protocol,
  ProtocolContext,
  ProtocolPlugin,
  Receive,
  ReturnPath
} from "./services/Protocol.ts"
export { Transport } from "./services/Transport.ts"
