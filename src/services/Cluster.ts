/**
 * Cluster: the public API, a facade over Discovery, Registry, Transport and
 * Hooks. It wires the member's pipelines, each in a module of its own under
 * ./cluster/ with its contract:
 *
 * - ReceivePipeline: decode -> drop checks -> membership -> receive hooks -> `messages`
 * - SendPipeline: send hooks -> encode, per protocol in the peer's order (fallback)
 * - Queries: asking with a timeout, and answering through query hooks
 * - Targets: services, resolve terms and clauses made into whom to send to
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import {
  ChannelError,
  type FrameTooLarge,
  type HookRejected,
  type InvalidMessage,
  type ProtocolFailure,
  type SendFailed,
  type ServiceNotFound
} from "../schema/Errors.ts"
import type { Sender } from "../schema/Frame.ts"
import type { QueryEvent, QueryOptions, QueryResult } from "../schema/Query.ts"
import type { Clause, InvalidQuery } from "../schema/Resolver.ts"
import type { ClusterEvent, Delivery, Message, Service } from "../schema/Service.ts"
import type { TagChange, TagError } from "../schema/Tags.ts"
import { makeQueries } from "./cluster/Queries.ts"
import { makeReceivePipeline, SYSTEM_CHANNEL } from "./cluster/ReceivePipeline.ts"
import { type Data, makeSendPipeline, type SendOptions } from "./cluster/SendPipeline.ts"
import { makeTargets, type Targets } from "./cluster/Targets.ts"
import type { Wiring } from "./cluster/Wiring.ts"
import { Discovery } from "./Discovery.ts"
import { type Hook, type HookPoint, Hooks } from "./Hooks.ts"
import { Keyring, type KeyringError, type KeySpec } from "./Keyring.ts"
import { Registry } from "./Registry.ts"
import { Stats, type StatsSnapshot } from "./Stats.ts"
import { Telemetry } from "./Telemetry.ts"
import { Transport } from "./Transport.ts"
import { Sources, type SourceStatus } from "./Sources.ts"
import { tracing } from "../internal/trace.ts"

export { type Data, type SendOptions, SYSTEM_CHANNEL, type Targets }

/**
 * Channels every member is on and cannot leave: 0 (broadcast), 1 (system:
 * accepted from this host only) and 2 (lan).
 */
export const FIXED_CHANNELS: ReadonlyArray<number> = [0, 1, 2]

/** The channels a member is on. */
export interface Channels {
  /** Joins a channel (3..65535); messages on it are accepted from now on. */
  readonly join: (channel: number) => Effect.Effect<void, ChannelError>
  /** Leaves a channel; 0, 1 and 2 cannot be left. */
  readonly leave: (channel: number) => Effect.Effect<void, ChannelError>
  /** The channels this member is on, in ascending order. */
  readonly list: Effect.Effect<ReadonlyArray<number>>
}

export interface ClusterShape {
  /** This member as the others see it. */
  readonly self: Effect.Effect<Service>
  /** Every service discovered and not yet lost (other members; not this one). */
  readonly services: Effect.Effect<ReadonlyArray<Service>>
  /** The distinct addresses of those services. */
  readonly ips: Effect.Effect<ReadonlyArray<string>>
  /**
   * Services matching every term: a tag, a name, an id (`hostId@name`), a
   * host id, an address, or `localhost` (services on this host).
   */
  readonly resolve: (...terms: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Service>>
  /** Services passing every clause, in order (see `Clause`: has, not, exact, some). */
  readonly resolver: (...clauses: ReadonlyArray<Clause>) => Effect.Effect<ReadonlyArray<Service>, InvalidQuery>
  /**
   * Sends `op` with `data` to every member (on the channel): by multicast to
   * the group, and directly to members only seeds or Redis know.
   */
  readonly broadcast: (
    op: string,
    data: Data,
    options?: SendOptions
  ) => Effect.Effect<void, HookRejected | FrameTooLarge | ProtocolFailure | InvalidMessage>
  /**
   * Sends `op` with `data` to each target directly, trying the target's
   * protocols in its order among those we speak; reports which one carried it.
   */
  readonly sendTo: (
    targets: Targets,
    op: string,
    data: Data,
    options?: SendOptions
  ) => Effect.Effect<ReadonlyArray<Delivery>, SendFailed | HookRejected | ServiceNotFound | InvalidMessage | InvalidQuery>
  /**
   * Sends many messages with one op to one service, in order: the streaming
   * form of `sendTo` for throughput. Over a connection they travel in batch
   * frames (up to 60 KiB of messages each: one frame to write and to decode
   * for many); each is still its own message to the receiver, its receive
   * hooks included. With send hooks, or while the connection cannot take a
   * batch, they go one `sendTo` each (which waits and falls back). Returns how
   * many were sent.
   */
  readonly sendAll: (
    target: Service,
    op: string,
    items: Iterable<Data>,
    options?: SendOptions
  ) => Effect.Effect<number, SendFailed | HookRejected | ServiceNotFound | InvalidMessage | InvalidQuery>
  /** The channels this member is on: join, leave, list. */
  readonly channels: Channels
  /**
   * The keys that seal frames: install a key, make it the one that seals
   * (`use`), remove an old one. Rotation without downtime: install the new key
   * on every member, then `use` it everywhere, then remove the old one.
   */
  readonly keyring: {
    readonly install: (key: KeySpec) => Effect.Effect<void, KeyringError>
    readonly use: (id: number) => Effect.Effect<void, KeyringError>
    readonly remove: (id: number) => Effect.Effect<void, KeyringError>
    readonly list: Effect.Effect<{ readonly ids: ReadonlyArray<number>; readonly primary: number | undefined }>
  }
  /** This member's tags. */
  readonly tags: Effect.Effect<ReadonlyArray<string>>
  /**
   * Changes this member's tags with the Tcl modifiers, applied in order (see
   * `TagChange`); returns the new tags. Peers see a `ServiceUpdated` at once:
   * the change goes out in a heartbeat (one for all changes made in one tick).
   */
  readonly updateTags: (...changes: ReadonlyArray<TagChange>) => Effect.Effect<ReadonlyArray<string>, TagError>
  /**
   * Registers a hook at a point. It is removed when the caller's scope closes
   * (if the caller runs in one); otherwise it lives as long as the member.
   * The hook runs with the caller's services, so it may use `Cluster` itself.
   */
  readonly hook: <A, B, E, R>(point: HookPoint<A, B>, hook: Hook<A, E, R, B>) => Effect.Effect<void, never, R>
  /**
   * Asks every target (services, resolve terms, or `{ where }` clauses) and
   * streams the answers as they come: responses, errors, then `QueryDone` when
   * all have answered or `QueryTimeout` (with who did not) when the timeout
   * comes first. Targets answer with a `HookPoint.query(op)` hook.
   */
  readonly query: (
    request: QueryOptions<Targets>
  ) => Stream.Stream<QueryEvent, ServiceNotFound | InvalidMessage | InvalidQuery>
  /** `query`, gathered: responses and errors by service id, and who is missing. */
  readonly queryAll: (
    request: QueryOptions<Targets>
  ) => Effect.Effect<QueryResult, ServiceNotFound | InvalidMessage | InvalidQuery>
  /**
   * Membership events: first a `ServiceFound` for every service already known,
   * then found, lost, updated and conflict events as they happen.
   */
  readonly events: Stream.Stream<ClusterEvent>
  /** Delivered messages (after every receive hook), from the moment the stream starts. */
  readonly messages: Stream.Stream<Message>
  /** Frames in and out, and drops by reason. */
  readonly stats: Effect.Effect<StatsSnapshot>
  /** This member's metrics in the Prometheus text format (they are Effect `Metric`s too; see Telemetry). */
  readonly metrics: Effect.Effect<string>
  /** Each discovery source this member runs (multicast, seeds, redis): up, connecting, or down with the last error. */
  readonly sources: Effect.Effect<ReadonlyArray<SourceStatus>>
  /** Every change of a source's state, from now on. */
  readonly sourceChanges: Stream.Stream<SourceStatus>
}

export class Cluster extends Context.Service<Cluster, ClusterShape>()("cluster-comm/Cluster") {
  static readonly self = Cluster.use((c) => c.self)
  static readonly services = Cluster.use((c) => c.services)
  static readonly ips = Cluster.use((c) => c.ips)
  static readonly resolve = (...terms: ReadonlyArray<string>) => Cluster.use((c) => c.resolve(...terms))
  static readonly resolver = (...clauses: ReadonlyArray<Clause>) => Cluster.use((c) => c.resolver(...clauses))
  static readonly broadcast = (op: string, data: Data, options?: SendOptions) =>
    Cluster.use((c) => c.broadcast(op, data, options))
  static readonly sendAll = (target: Service, op: string, items: Iterable<Data>, options?: SendOptions) =>
    Cluster.use((c) => c.sendAll(target, op, items, options))
  static readonly sendTo = (targets: Targets, op: string, data: Data, options?: SendOptions) =>
    Cluster.use((c) => c.sendTo(targets, op, data, options))
  static readonly tags = Cluster.use((c) => c.tags)
  static readonly updateTags = (...changes: ReadonlyArray<TagChange>) => Cluster.use((c) => c.updateTags(...changes))
  static readonly keyring = {
    install: (key: KeySpec) => Cluster.use((c) => c.keyring.install(key)),
    use: (id: number) => Cluster.use((c) => c.keyring.use(id)),
    remove: (id: number) => Cluster.use((c) => c.keyring.remove(id)),
    list: Cluster.use((c) => c.keyring.list)
  }
  static readonly channels = {
    join: (channel: number) => Cluster.use((c) => c.channels.join(channel)),
    leave: (channel: number) => Cluster.use((c) => c.channels.leave(channel)),
    list: Cluster.use((c) => c.channels.list)
  }
  static readonly hook = <A, B, E, R>(point: HookPoint<A, B>, hook: Hook<A, E, R, B>) =>
    Cluster.use((c) => c.hook(point, hook))
  static readonly query = (request: QueryOptions<Targets>) => Stream.unwrap(Cluster.useSync((c) => c.query(request)))
  // One `withFiber` for the service and the query's tracer check both (see `fastPaths`).
  static readonly queryAll = (
    request: QueryOptions<Targets>
  ): Effect.Effect<QueryResult, ServiceNotFound | InvalidMessage | InvalidQuery, Cluster> =>
    Effect.withFiber((fiber) => {
      const cluster = Context.getUnsafe(fiber.context, Cluster)
      const fast = fastPaths.get(cluster)
      return fast !== undefined ? fast.queryAllIn(fiber, request) : cluster.queryAll(request)
    })
  static readonly events = Stream.unwrap(Cluster.useSync((c) => c.events))
  static readonly messages = Stream.unwrap(Cluster.useSync((c) => c.messages))
  static readonly stats = Cluster.use((c) => c.stats)
  static readonly metrics = Cluster.use((c) => c.metrics)
  static readonly sources = Cluster.use((c) => c.sources)
  static readonly sourceChanges = Stream.unwrap(Cluster.useSync((c) => c.sourceChanges))

  /** The facade over the four services; `hostOnly` drops frames from other hosts. */
  static readonly layer = (options: {
    readonly sender: Sender
    readonly hostOnly: boolean
    readonly bufferSize: number
    readonly channels: ReadonlyArray<number>
    readonly allow: ReadonlyArray<string>
  }) =>
    Layer.effect(
      Cluster,
      Effect.gen(function*() {
        const discovery = yield* Discovery
        const registry = yield* Registry
        const hooks = yield* Hooks
        const keyring = yield* Keyring
        const telemetry = yield* Telemetry
        const stats = yield* Stats
        const sources = yield* Sources
        const traced = yield* Effect.withFiber((fiber) => Effect.succeed(tracing(fiber)))
        const wiring: Wiring = {
          transport: yield* Transport,
          registry,
          discovery,
          hooks,
          stats,
          telemetry,
          sender: options.sender,
          selfId: discovery.self().id,
          runNow: yield* ownedRunner,
          tracing: traced,
          runHooks: traced ? hooks.run : hooks.runNow
        }
        const joined = new Set([...FIXED_CHANNELS, ...options.channels])
        const targets = makeTargets(registry)
        const send = makeSendPipeline(wiring, targets.targetsOf)
        const queries = yield* makeQueries(wiring, send, targets.targetsOf)
        const { messages } = yield* makeReceivePipeline(wiring, queries, { ...options, joined })

        const cluster = Cluster.of({
          self: Effect.sync(discovery.self),
          tags: Effect.sync(() => discovery.self().tags),
          updateTags: (...changes) => discovery.updateTags(changes),
          services: targets.services,
          ips: Effect.map(targets.services, (all) => [...new Set(all.map((s) => s.address))]),
          resolve: targets.resolve,
          resolver: targets.resolver,
          query: queries.query,
          queryAll: queries.queryAll,
          broadcast: send.broadcast,
          sendTo: send.sendTo,
          sendAll: send.sendAll,
          keyring: {
            install: keyring.install,
            use: keyring.use,
            remove: keyring.remove,
            list: keyring.list
          },
          channels: {
            join: (channel) =>
              Effect.suspend(() => {
                if (!Number.isInteger(channel) || channel < 0 || channel > 65535) {
                  return Effect.fail(new ChannelError({ channel, message: `channel ${channel} is not 0..65535` }))
                }
                joined.add(channel)
                return Effect.void
              }),
            leave: (channel) =>
              Effect.suspend(() => {
                if (FIXED_CHANNELS.includes(channel)) {
                  return Effect.fail(new ChannelError({ channel, message: `channel ${channel} cannot be left (0, 1 and 2 are every member's)` }))
                }
                joined.delete(channel)
                return Effect.void
              }),
            list: Effect.sync(() => [...joined].sort((a, b) => a - b))
          },
          // A hook runs with its caller's services; one that hands back a
          // finished Effect (an Exit) needs none, and stays an Exit (the hooks
          // then end without a fiber, see `Hooks.runNow`).
          hook: <A, B, E, R>(point: HookPoint<A, B>, hook: Hook<A, E, R, B>) =>
            Effect.contextWith((context: Context.Context<R>) => {
              const withCallers = servicesOf(context)
              return point.responds
                // A query hook's value is the response: carry it on as the message's data
                // (none stays none: the hooks refuse it, rather than answer with the query's own data).
                ? hooks.register(point as unknown as HookPoint<Message>, (query: Message) => {
                  const answer = hook(query as A)
                  if (Exit.isExit(answer)) return answer._tag === "Success" ? Exit.succeed(answered(query, answer.value)) : answer as Exit.Exit<never, unknown>
                  return Effect.map(withCallers(answer), (data) => answered(query, data))
                })
                : hooks.register(point as unknown as HookPoint<A>, (value: A) => {
                  const next = hook(value)
                  return (Exit.isExit(next) ? next : withCallers(next)) as unknown as Effect.Effect<A, E>
                })
            }),
          events: registry.events,
          messages,
          stats: stats.snapshot,
          metrics: telemetry.prometheus,
          sources: sources.status,
          sourceChanges: sources.changes
        })
        fastPaths.set(cluster, { queryAllNow: queries.queryAllNow, queryAllIn: queries.queryAllIn })
        return cluster
      })
    )
}

/**
 * @internal A member's `queryAll` by shorter ways, for the round trip's hot
 * path: without a fiber, for the Promise API (see Queries' `queryAllNow`), and
 * from a fiber at hand, for the accessor. A member built by another layer has none.
 */
export const fastPaths = new WeakMap<Cluster["Service"], {
  readonly queryAllNow: (request: QueryOptions<Targets>, end: (result: QueryResult) => void, fail: (error: InvalidMessage) => void) => boolean
  readonly queryAllIn: (fiber: Fiber.Fiber<unknown, unknown>, request: QueryOptions<Targets>) => ReturnType<Cluster["Service"]["queryAll"]>
}>()

/**
 * Runs a hook's effect with its caller's services over those of the fiber it
 * runs in, as `Effect.provide` of a context does; but the two are merged once
 * for each context the fibers run with (the member's own, unless spans are
 * made), not copied again at every message: a fiber's context holds dozens
 * of entries, and the copy was most of what a message allocated.
 */
const servicesOf = <R>(context: Context.Context<R>) => {
  let before: Context.Context<never> | undefined
  let merged: Context.Context<never> | undefined
  return <A, E>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E> =>
    Effect.updateContext(effect, (current: Context.Context<never>) => {
      if (current !== before) {
        merged = Context.merge(current, context)
        before = current
      }
      return merged as Context.Context<R>
    })
}

/** A query hook's answer as the reply's message; nothing stays nothing. */
const answered = (query: Message, data: unknown): Message =>
  (data === undefined || data === null ? data : query.with({ data: data as Data })) as Message

/**
 * Runs effects in fibers the member owns: started at once, and kept (to be
 * interrupted when the member leaves) only when they did not end at once:
 * most (a query answered, a reply sent) do, and are spared the set's upkeep.
 */
const ownedRunner = Effect.gen(function*() {
  const fibers = yield* FiberSet.make<unknown, never>()
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  return <A>(effect: Effect.Effect<A>): Fiber.Fiber<A> => {
    // Leaving: nothing more starts (an already interrupted fiber, as FiberSet's runtime gives).
    const fiber = runFork(fibers.state._tag === "Closed" ? Effect.interrupt : effect)
    if (fiber.pollUnsafe() === undefined) FiberSet.addUnsafe(fibers, fiber)
    return fiber
  }
})
