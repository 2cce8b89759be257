/**
 * `ClusterLive`: a member on real sockets. Building the layer joins the
 * cluster; closing its scope leaves it.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redis from "effect/persistence/Redis"
import { detectHostId, interfaceAddress, newInstance } from "../internal/host.ts"
import { type ClusterConfigInput, makeConfig } from "../schema/Config.ts"
import type { JoinError } from "../schema/Errors.ts"
import type { Cluster } from "../services/Cluster.ts"
import type { ProtocolPlugin } from "../services/Protocol.ts"
import { Transport } from "../services/Transport.ts"
import { composeCluster } from "./compose.ts"

/**
 * Joins the cluster as `name` (or with a full configuration).
 *
 * @example
 * ```ts
 * Effect.gen(function*() {
 *   yield* Cluster.broadcast("C", "Hello")
 * }).pipe(Effect.provide(ClusterLive("service_one")))
 * ```
 */
export const ClusterLive = (
  nameOrConfig: string | ClusterConfigInput = {},
  options: LiveOptions = {}
): Layer.Layer<Cluster, JoinError> => ClusterServices(nameOrConfig, options)

/** What `ClusterLive` takes besides the configuration: code, not data. */
export interface LiveOptions {
  /** Protocol plug-ins, used when `config.protocols` names them. */
  readonly protocols?: ReadonlyArray<ProtocolPlugin>
  /**
   * The `Redis` service for the Redis source (any implementation of
   * `effect/persistence/Redis`), instead of node-redis at `config.redis`'s URL.
   */
  readonly redis?: Layer.Layer<Redis.Redis, unknown>
}

/**
 * `ClusterLive` with every service of the stack in its output (Transport,
 * Registry, Discovery, Hooks, Stats): for tests and tools that look inside.
 */
export const ClusterServices = (nameOrConfig: string | ClusterConfigInput = {}, options: LiveOptions = {}) =>
  Layer.unwrap(
    Effect.gen(function*() {
      const config = yield* Effect.fromResult(makeConfig(nameOrConfig))
      const sender = { hostId: config.hostId ?? detectHostId(), instance: newInstance(), name: config.name }
      const address = config.advertise ??
        (config.hostOnly ? "127.0.0.1" : interfaceAddress(config.interface) ?? "0.0.0.0")
      return composeCluster(config, sender, address, Transport.layer(config, sender, options.protocols), {
        redis: options.redis
      }).pipe(
        Layer.withSpan("cluster-comm.join", { attributes: { service: `${sender.hostId}@${sender.name}`, port: config.port } })
      )
    })
  )
