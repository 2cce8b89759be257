/**
 * How the four services stack, whatever carries the frames: Hooks and Stats
 * first, then the Transport given, Registry, Discovery, and the Cluster facade.
 * Closing the stack runs it backwards, so the leave goes out before the sockets close.
 */
import * as Layer from "effect/Layer"
import type { ClusterConfig } from "../schema/Config.ts"
import type { JoinError } from "../schema/Errors.ts"
import type { Sender } from "../schema/Frame.ts"
import { serviceId } from "../schema/Service.ts"
import { Cluster } from "../services/Cluster.ts"
import { Discovery } from "../services/Discovery.ts"
import { Hooks } from "../services/Hooks.ts"
import { Keyring } from "../services/Keyring.ts"
import { Registry } from "../services/Registry.ts"
import { Stats } from "../services/Stats.ts"
import { Telemetry } from "../services/Telemetry.ts"
import type { Transport } from "../services/Transport.ts"
import type * as Redis from "effect/persistence/Redis"
import type { SourceName } from "../schema/Service.ts"
import { Sources } from "../services/Sources.ts"
import { RedisSource } from "../services/sources/Redis.ts"
import { SeedsSource } from "../services/sources/Seeds.ts"

/** What composes besides the configuration: a `Redis` service for the Redis source. */
export interface ComposeOptions {
  readonly redis?: Layer.Layer<Redis.Redis, unknown> | undefined
}

export const composeCluster = (
  config: ClusterConfig,
  sender: Sender,
  address: string,
  transport: Layer.Layer<Transport, JoinError, Stats | Keyring>,
  options: ComposeOptions = {}
): Layer.Layer<Cluster | Discovery | Registry | Transport | Hooks | Stats | Keyring | Telemetry | Sources, JoinError> => {
  // fresh: two members built in one program must not share hooks, counters or keys.
  const base = Layer.mergeAll(
    Layer.fresh(Hooks.layer),
    Layer.fresh(Stats.layer),
    Keyring.layer({ keys: config.keyring, primary: config.primary })
  )
  const withTransport = transport.pipe(Layer.provideMerge(base))
  const withRegistry = Registry.layer({
    ttl: config.ttl,
    self: { id: serviceId(sender.hostId, sender.name), instance: sender.instance },
    bufferSize: config.bufferSize,
    maxServices: config.maxServices
  }).pipe(Layer.provideMerge(withTransport))
  const withTelemetry = Telemetry.layer({
    service: serviceId(sender.hostId, sender.name),
    port: config.metricsPort
  }).pipe(Layer.provideMerge(withRegistry))
  const redis = config.redis !== undefined || options.redis !== undefined
  const running: Array<SourceName> = [
    ...(config.multicast ? ["multicast" as const] : []),
    ...(config.seeds.length > 0 || config.seedPort !== 0 ? ["seeds" as const] : []),
    ...(redis ? ["redis" as const] : [])
  ]
  const withSources = Sources.layer(running).pipe(Layer.provideMerge(withTelemetry))
  const withDiscovery = Discovery.layer({ sender, tags: config.tags, heartbeat: config.heartbeat, address, multicast: config.multicast }).pipe(
    Layer.provideMerge(withSources)
  )
  // Sources beyond the group run beside the facade, fed by Discovery and feeding the Registry.
  const beyond = Layer.mergeAll(
    config.seeds.length > 0 ? SeedsSource.layer({ seeds: config.seeds, heartbeat: config.heartbeat }) : Layer.empty,
    redis
      ? RedisSource.layer({ config, sender, redis: options.redis })
      : Layer.empty
  ).pipe(Layer.provideMerge(withDiscovery))
  return Cluster.layer({
    sender,
    hostOnly: config.hostOnly,
    bufferSize: config.bufferSize,
    channels: config.channels,
    allow: config.allow
  }).pipe(
    Layer.provideMerge(beyond)
  )
}
