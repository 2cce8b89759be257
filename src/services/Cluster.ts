/**
 * Cluster: the public API, a facade over Discovery, Registry, Transport and
 * Hooks. It runs the two pipelines of DESIGN.md:
 *
 * - receive: decode (Transport) -> drop checks (own, non-local, channel,
 *   filter) -> service eval -> validate | found (Registry) -> protocol <p>
 *   receive -> receive -> op <op> receive -> `messages`
 * - send: op <op> send -> protocol <p> send -> send -> encode (Transport),
 *   per protocol in the peer's order until one carries the frame
 */
import * as Arr from "effect/Array"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import { inNetworks, isLocalAddress, parseCidr } from "../internal/host.ts"
import { makeAlarm } from "../internal/alarm.ts"
import { traced } from "../internal/trace.ts"
import {
  ChannelError,
  type FrameTooLarge,
  type HookRejected,
  InvalidMessage,
  type ProtocolFailure,
  type SendAttempt,
  SendFailed,
  ServiceNotFound
} from "../schema/Errors.ts"
import {
  checkFrame,
  type Frame,
  isTraffic,
  MAX_OP_BYTES,
  MAX_BATCH_ITEMS,
  type MessageFrame,
  type MessagesFrame,
  type QueryFrame,
  type ReplyFrame,
  type Sender
} from "../schema/Frame.ts"
import {
  QueryDone,
  QueryError,
  type QueryEvent,
  type QueryOptions,
  QueryResponse,
  type QueryResult,
  QueryTimeout
} from "../schema/Query.ts"
import {
  type Advertised,
  type ClusterEvent,
  type Delivery,
  Message,
  type Outgoing,
  type ProtocolName,
  type Service,
  serviceId,
  toBytes
} from "../schema/Service.ts"
import { type Clause, compileQuery, InvalidQuery, termsOf } from "../schema/Resolver.ts"
import type { TagChange, TagError } from "../schema/Tags.ts"
import { Discovery } from "./Discovery.ts"
import { type Hook, type HookPoint, HookPoint as Points, Hooks } from "./Hooks.ts"
import { Keyring, type KeyringError, type KeySpec } from "./Keyring.ts"
import { Registry } from "./Registry.ts"
import { Stats, type StatsSnapshot } from "./Stats.ts"
import { Telemetry } from "./Telemetry.ts"
import { type Inbound, Transport } from "./Transport.ts"

/** Who to send to: a service, several, or resolve terms (every term must match). */
export type Targets = Service | string | ReadonlyArray<Service | string> | { readonly where: ReadonlyArray<Clause> }

export type Data = string | Uint8Array

/** At most this many queries are answered at once; more are refused as busy. */
const MAX_ANSWERING = 1024

/** Where a message goes besides its targets. */
export interface SendOptions {
  /** The channel (0..65535); default 0. Only members on it accept the message. */
  readonly channel?: number
}

/** Receive hook point sets kept made (per protocol, channel and op). */
const MAX_POINT_SETS = 1024

/** The most data a `sendAll` batch frame carries. */
const BATCH_BYTES = 60 * 1024

/** How long a query waits for answers unless it says otherwise. */
const QUERY_TIMEOUT = Duration.seconds(5)

/** A query of ours awaiting answers. */
interface Waiting {
  /** When it times out (the member's clock, in milliseconds). */
  readonly at: number
  /** Takes a reply from `from`; false when none was expected from it. */
  readonly reply: (from: Service, ok: boolean, data: Uint8Array) => boolean
  /** The deadline came first. */
  readonly expire: () => void
}

/**
 * Channels every member is on and cannot leave: 0 (broadcast), 1 (system:
 * accepted from this host only) and 2 (lan).
 */
export const FIXED_CHANNELS: ReadonlyArray<number> = [0, 1, 2]
export const SYSTEM_CHANNEL = 1

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
  /** Sends `op` with `data` to every member (on the channel) by multicast. */
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
  static readonly queryAll = (request: QueryOptions<Targets>) => Cluster.use((c) => c.queryAll(request))
  static readonly events = Stream.unwrap(Cluster.useSync((c) => c.events))
  static readonly messages = Stream.unwrap(Cluster.useSync((c) => c.messages))
  static readonly stats = Cluster.use((c) => c.stats)
  static readonly metrics = Cluster.use((c) => c.metrics)

  /** The facade over the four services; `remote: 0` drops frames from other hosts. */
  static readonly layer = (options: {
    readonly sender: Sender
    readonly remote: number
    readonly bufferSize: number
    readonly channels: ReadonlyArray<number>
    readonly allow: ReadonlyArray<string>
  }) =>
    Layer.effect(
      Cluster,
      Effect.gen(function*() {
        const transport = yield* Transport
        const registry = yield* Registry
        const discovery = yield* Discovery
        const hooks = yield* Hooks
        const stats = yield* Stats
        const { sender } = options
        const selfId = discovery.self().id
        const joined = new Set([...FIXED_CHANNELS, ...options.channels])
        const allowed = options.allow.map((c) => parseCidr(c)!)
        const keyring = yield* Keyring
        const telemetry = yield* Telemetry
        // Messages are published in batches (those of one pass of the pipeline):
        // one wake-up of each subscriber per batch, not per message. Bounded with
        // backpressure: a slow subscriber slows the pipeline (and, through paused
        // tcp reads, the senders) instead of losing messages.
        const delivered = yield* PubSub.bounded<Arr.NonEmptyReadonlyArray<Message>>(Math.max(4, Math.ceil(options.bufferSize / 256)))
        yield* Effect.addFinalizer(() => PubSub.shutdown(delivered))

        // ---- receive ----

        let batch: Array<Message> = []
        /** Queues a message for the next batch. */
        const deliver = (message: Message): Effect.Effect<void> => {
          stats.message("in", message.op)
          batch.push(message)
          return Effect.void
        }
        /** Publishes the batch: at once when there is room, else waiting for it. */
        const publish = (): Effect.Effect<void> => {
          if (!Arr.isArrayNonEmpty(batch)) return Effect.void
          const out = batch
          batch = []
          return PubSub.publishUnsafe(delivered, out) ? Effect.void : Effect.asVoid(PubSub.publish(delivered, out))
        }

        /** Runs each point's hooks in turn, building nothing for points without hooks. */
        const through = <A>(points: ReadonlyArray<HookPoint<A>>, value: A): Effect.Effect<A, HookRejected> => {
          let chain: Effect.Effect<A, HookRejected> | undefined
          for (const p of points) {
            if (!hooks.has(p)) continue
            chain = chain === undefined ? hooks.run(p, value) : Effect.flatMap(chain, (v) => hooks.run(p, v))
          }
          return chain ?? Effect.succeed(value)
        }

        // The receive hook points of a protocol, channel and op, made once: their
        // keys are strings to build and hash. Bounded: ops come from the network.
        const pointsMade = new Map<string, ReadonlyArray<HookPoint<Message>>>()
        const receivePoints = (protocol: ProtocolName, channel: number, op: string) => {
          const key = `${protocol} ${channel} ${op}`
          let points = pointsMade.get(key)
          if (points === undefined) {
            if (pointsMade.size >= MAX_POINT_SETS) pointsMade.clear()
            points = [
              Points.protocol(protocol, "receive"),
              Points.channel(channel, "receive"),
              Points.receive,
              Points.op(op, "receive")
            ]
            pointsMade.set(key, points)
          }
          return points
        }

        /**
         * Messages of one sender, op and channel (a message, or a batch's), in
         * order, each through the receive hooks as if it came alone. Known
         * sender and no receive hooks: delivered at once.
         */
        const receiveData = (
          frame: MessageFrame | MessagesFrame,
          items: ReadonlyArray<Uint8Array>,
          protocol: ProtocolName,
          address: string
        ): Effect.Effect<void> => {
          const sighting = { sender: frame.sender, address }
          const known = registry.observeNow(sighting)
          if (known !== undefined && !hooks.anyFor("receive")) {
            for (const data of items) deliver(new Message(frame.op, data, known, protocol, frame.channel))
            return Effect.void
          }
          const points = receivePoints(protocol, frame.channel, frame.op)
          return (known !== undefined ? Effect.succeed(known) : registry.observe(sighting)).pipe(
            Effect.flatMap((from) =>
              from === undefined ? Effect.void : Effect.forEach(items, (data) =>
                through(points, new Message(frame.op, data, from, protocol, frame.channel)).pipe(
                  Effect.flatMap((m) => deliver(normalize(m))),
                  Effect.catchTag("HookRejected", () => Effect.sync(() => stats.drop("hook-rejected")))
                ), { discard: true })
            )
          )
        }

        const receiveMessage = (frame: MessageFrame, protocol: ProtocolName, address: string) => {
          if (frame.targets.length > 0 && !frame.targets.includes(selfId)) {
            stats.drop("filtered")
            return Effect.void
          }
          return receiveData(frame, [frame.data], protocol, address)
        }

        /** The drop checks every frame passes first; true when it may go on. */
        const admitted = (frame: Frame, address: string): boolean => {
          if (frame.sender.instance === sender.instance) {
            stats.drop("own")
            return false
          }
          const local = isLocalAddress(address)
          if (!local) {
            if (options.remote === 0) {
              stats.drop("non-local")
              return false
            }
            if (allowed.length > 0 && !inNetworks(address, allowed)) {
              stats.drop("not-allowed")
              return false
            }
          }
          if (frame._tag === "Message" || frame._tag === "Messages" || frame._tag === "Query") {
            if (!joined.has(frame.channel)) {
              stats.drop("channel")
              return false
            }
            if (frame.channel === SYSTEM_CHANNEL && !local) {
              stats.drop("non-local")
              return false
            }
          }
          return true
        }

        /** The message pump, busy while it handles what it took: traffic then waits its turn. */
        const messageLine = { busy: false }
        /** Traffic handled from the socket's callback, still running (hooks that wait): the pump waits for it. */
        let onCallback: Fiber.Fiber<void> | undefined

        /**
         * Takes batches from a queue forever, handling each admitted frame in
         * order; `line` (the message pump's) marks it busy meanwhile.
         */
        const pump = (
          take: Effect.Effect<ReadonlyArray<Inbound>>,
          handle: (inbound: Inbound) => Effect.Effect<void>,
          line?: { busy: boolean }
        ) =>
          Effect.gen(function*() {
            while (true) {
              const taken = yield* take
              if (line !== undefined) {
                line.busy = true
                // Traffic handled from the socket's callback comes first: it arrived first.
                if (onCallback !== undefined) yield* Fiber.await(onCallback)
              }
              for (const inbound of taken) {
                if (!admitted(inbound.frame, inbound.address)) continue
                const handled = handle(inbound)
                // Most frames are handled synchronously: skip the yield.
                if (handled !== Effect.void) yield* handled
              }
              const published = publish()
              if (published !== Effect.void) yield* published
              if (line !== undefined) line.busy = false
            }
          }).pipe(Effect.forkScoped)

        // Fibers the member owns (with its services, its clock among them), for
        // what starts in plain code: on a socket's callback, a query's later sends.
        const runNow = yield* FiberSet.makeRuntime<never, void, never>()
        /** Runs traffic from the callback; until it is done, later traffic queues behind it. */
        const holdLine = (handling: Effect.Effect<void>) => {
          const fiber = runNow(handling)
          if (fiber.pollUnsafe() !== undefined) return
          onCallback = fiber
          fiber.addObserver(() => {
            if (onCallback === fiber) onCallback = undefined
          })
        }
        /**
         * A message (or a batch) on the socket's callback: delivered at once
         * when it has no receive hooks to run (published with the rest of the
         * chunk's), else its hooks start in a fiber that holds the line.
         * Publishing to a full subscriber waits in such a fiber too.
         */
        const messageNow = (frame: MessageFrame | MessagesFrame, protocol: ProtocolName, address: string): true => {
          const handling = frame._tag === "Message"
            ? receiveMessage(frame, protocol, address)
            : receiveData(frame, frame.items, protocol, address)
          if (handling !== Effect.void) holdLine(Effect.andThen(handling, Effect.suspend(publish)))
          else if (!publishing) {
            // Published once the socket's chunk is done: its messages go out as one batch.
            publishing = true
            queueMicrotask(() => {
              publishing = false
              const published = publish()
              if (published !== Effect.void) holdLine(published)
            })
          }
          return true
        }
        let publishing = false

        yield* pump(transport.takeBeacons, ({ frame, address, port }) =>
          isTraffic(frame) ? Effect.void : discovery.handle(frame, address, port))
        yield* pump(transport.takeMessages, ({ frame, protocol, address }) =>
          frame._tag === "Message" ? receiveMessage(frame, protocol, address) :
          frame._tag === "Messages" ? receiveData(frame, frame.items, protocol, address) :
          frame._tag === "Query" ? receiveQuery(frame, protocol, address) :
          frame._tag === "Reply" ? Effect.sync(() => receiveReply(frame, address)) :
          Effect.void, messageLine)

        // ---- send ----

        const checked = (frame: MessageFrame) => {
          const problem = checkFrame(frame)
          return problem === undefined ? Effect.succeed(frame) : Effect.fail(new InvalidMessage({ message: problem }))
        }

        const speaks = new Set(transport.protocols.keys())
        // Memoised per advertised list, apart for local and remote peers.
        const orders = [new WeakMap<ReadonlyArray<Advertised>, ReadonlyArray<ProtocolName>>(), new WeakMap<ReadonlyArray<Advertised>, ReadonlyArray<ProtocolName>>()]
        /**
         * The peer's protocols, in its order, that we speak; for a peer on this
         * host the local-only ones (unix) first, for others none of them; just
         * udp (a filtered datagram) when nothing is left.
         */
        const orderFor = (peer: Service): ReadonlyArray<ProtocolName> => {
          const memo = orders[peer.local ? 1 : 0]!
          let order = memo.get(peer.protocols)
          if (order === undefined) {
            const common = peer.protocols.map((p) => p.protocol).filter((p) => speaks.has(p))
            const local = peer.local ? common.filter((p) => transport.localOnly.has(p)) : []
            const rest = common.filter((p) => !transport.localOnly.has(p))
            order = local.length + rest.length > 0 ? [...local, ...rest] : ["udp"]
            memo.set(peer.protocols, order)
          }
          return order
        }

        /** The wire frame; datagrams carry a target filter, a tcp connection already is one. */
        const frameOf = (op: string, channel: number, targets: ReadonlyArray<Service>, data: Uint8Array, protocol: ProtocolName): MessageFrame => ({
          _tag: "Message",
          sender,
          op,
          channel,
          targets: protocol === "udp" ? targets.map((t) => t.id) : [],
          data
        })

        /** op hook done: protocol hook, send hook, then the frame to encode. */
        const outbound = (out: Outgoing, protocol: ProtocolName) =>
          hooks.run(Points.protocol(protocol, "send"), out.protocol === protocol ? out : { ...out, protocol }).pipe(
            Effect.flatMap((o) => hooks.run(Points.send, o)),
            Effect.flatMap((o) => checked(frameOf(o.op, o.channel, o.targets, o.data, protocol)))
          )

        /** The hooks a message passes once, whatever carries it: op, then channel. */
        const prepared = (out: Outgoing) =>
          hooks.run(Points.op(out.op, "send"), out).pipe(
            Effect.flatMap((o) => hooks.run(Points.channel(o.channel, "send"), o))
          )

        const broadcast = (op: string, data: Data, send?: SendOptions) =>
          Effect.suspend(() => {
            const out: Outgoing = { op, data: toBytes(data), channel: send?.channel ?? 0, targets: [], protocol: "udp" }
            return prepared(out).pipe(
              Effect.flatMap((o) => outbound(o, "udp")),
              Effect.flatMap((frame) => transport.multicast(frame)),
              Effect.tap(() => Effect.sync(() => {
                stats.frameOut("udp")
                stats.message("out", op)
              }))
            )
          })

        /**
         * Sends to one peer, trying its protocols in order until one carries
         * the frame; `build` makes the frame for each protocol (hooks may run there).
         */
        const deliverTo = <E>(peer: Service, build: (protocol: ProtocolName) => Effect.Effect<Frame, E>) =>
          Effect.gen(function*() {
            const attempts: Array<SendAttempt> = []
            for (const protocol of orderFor(peer)) {
              const frame = yield* build(protocol)
              const sent = yield* Effect.result(transport.send(protocol, peer, frame))
              if (sent._tag === "Success") {
                stats.frameOut(protocol)
                if (frame._tag === "Message") stats.message("out", frame.op)
                if (attempts.length > 0) stats.fellBack()
                // Reached only by a fallback: tell the peer which of its listeners failed us.
                const failed = attempts.filter((a) => a.cause._tag === "ProtocolFailure").map((a) => a.protocol)
                if (failed.length > 0) yield* discovery.repair(peer, failed, protocol)
                return { service: peer, protocol } satisfies Delivery
              }
              attempts.push({ protocol, cause: sent.failure })
              // A failed attempt is news: the peer may be gone. Ask the cluster to check.
              if (sent.failure._tag === "ProtocolFailure") yield* discovery.ping(peer)
            }
            stats.sendFailed()
            return yield* new SendFailed({ service: peer, attempts })
          })

        /** The synchronous path of `deliverTo`: the protocol when the peer's first one took the frame at once. */
        const deliverNow = (peer: Service, frameFor: (protocol: ProtocolName) => Frame): ProtocolName | undefined => {
          const protocol = orderFor(peer)[0]!
          if (!transport.sendNow(protocol, peer, frameFor(protocol))) return undefined
          stats.frameOut(protocol)
          return protocol
        }

        /** Whether messages with `op` may skip the full send path: no send hooks to run, an op the wire takes. */
        const plain = (op: string): boolean => {
          if (hooks.anyFor("send")) return false
          const opBytes = Buffer.byteLength(op)
          return opBytes > 0 && opBytes <= MAX_OP_BYTES
        }

        const sendOne = (peer: Service, op: string, data: Uint8Array, channel: number) =>
          prepared({ op, data, channel, targets: [peer], protocol: orderFor(peer)[0]! }).pipe(
            Effect.flatMap((out) => deliverTo(peer, (protocol) => outbound(out, protocol)))
          )

        /**
         * The per-message fast path: one service, no hooks anywhere, its first
         * protocol ready to take the frame now. Undefined when the full path must run.
         */
        const sendNow = (peer: Service, op: string, data: Data): Effect.Effect<ReadonlyArray<Delivery>> | undefined => {
          if (!plain(op)) return undefined
          const protocol = deliverNow(peer, (p) => frameOf(op, 0, [peer], toBytes(data), p))
          if (protocol === undefined) return undefined
          stats.message("out", op)
          return Effect.succeed([{ service: peer, protocol }])
        }

        const services = registry.list

        const resolve = (...terms: ReadonlyArray<string>) =>
          Effect.map(services, (all) => all.filter((s) => terms.every((t) => matches(s, t))))

        const targetsOf = (targets: Targets): Effect.Effect<ReadonlyArray<Service>, ServiceNotFound | InvalidQuery> =>
          isOneService(targets) ? Effect.succeed([targets]) : Effect.gen(function*() {
            if (typeof targets === "object" && "where" in targets) {
              const test = compileQuery(targets.where)
              if (test instanceof InvalidQuery) return yield* test
              return (yield* services).filter(test)
            }
            const list = typeof targets === "string" || !Array.isArray(targets) ? [targets as Service | string] : targets
            const found: Array<Service> = []
            for (const t of list) {
              if (typeof t !== "string") {
                found.push(t)
                continue
              }
              const matched = yield* resolve(t)
              if (matched.length === 0) return yield* new ServiceNotFound({ terms: [t] })
              found.push(...matched)
            }
            // One frame per service, even when several terms name it.
            return [...new Map(found.map((s) => [s.id, s])).values()]
          })

        const sendTo = (targets: Targets, op: string, data: Data, send?: SendOptions) =>
          (send?.channel === undefined && isOneService(targets) && sendNow(targets, op, data)) ||
          Effect.gen(function*() {
            const peers = yield* targetsOf(targets)
            const bytes = toBytes(data)
            const channel = send?.channel ?? 0
            if (peers.length === 1) return [yield* sendOne(peers[0]!, op, bytes, channel)]
            // Every target is tried even if another fails; the first failure is reported.
            const results = yield* Effect.forEach(peers, (peer) => Effect.result(sendOne(peer, op, bytes, channel)), {
              concurrency: "unbounded"
            })
            const deliveries: Array<Delivery> = []
            for (const r of results) {
              if (r._tag === "Failure") return yield* Effect.fail(r.failure)
              deliveries.push(r.success)
            }
            return deliveries
          }).pipe((send) => traced(send, "cluster-comm.sendTo", { op }))

        // ---- queries ----

        /** Queries of ours awaiting answers, by request id: a reply's handler, and the deadline. */
        const pending = new Map<number, Waiting>()
        // One alarm for all their timeouts: a query arms and clears no timer of its own.
        const clock = yield* Clock.Clock
        const queryAlarm = yield* makeAlarm((now) =>
          Effect.sync(() => {
            let next = Infinity
            for (const [id, waiting] of pending) {
              if (waiting.at <= now) {
                pending.delete(id)
                waiting.expire()
              } else if (waiting.at < next) next = waiting.at
            }
            return next
          }), 0)
        let lastId = 0
        const nextId = () => {
          do lastId = (lastId + 1) >>> 0
          while (lastId === 0 || pending.has(lastId))
          return lastId
        }
        let answering = 0

        const reply = (to: Service, id: number, ok: boolean, data: Uint8Array): Effect.Effect<void> => {
          const frame: Frame = { _tag: "Reply", sender, id, ok, data }
          if (deliverNow(to, () => frame) !== undefined) return Effect.void
          return deliverTo(to, () => Effect.succeed(frame)).pipe(
            Effect.catch((e) => Effect.logDebug(`reply to ${to.id} not sent: ${e.message}`))
          )
        }

        /**
         * Answers a query from a known service: a refusal at once, or the
         * responder's hooks as an effect to run in a fiber of its own (a slow
         * responder must not hold up other traffic).
         */
        const answer = (from: Service, frame: QueryFrame, protocol: ProtocolName): Effect.Effect<void> => {
          const point = Points.query(frame.op)
          if (!hooks.has(point)) return reply(from, frame.id, false, toBytes(`no responder for op ${frame.op}`))
          // Bounded: past this many answers in progress, say so rather than queue.
          if (answering >= MAX_ANSWERING) {
            stats.drop("busy")
            return reply(from, frame.id, false, toBytes("busy"))
          }
          answering++
          const query = new Message(frame.op, frame.data, from, protocol, frame.channel)
          return hooks.run(point as unknown as HookPoint<Message>, query).pipe(
            Effect.matchEffect({
              onSuccess: (answered) => reply(from, frame.id, true, answered.data),
              onFailure: (rejected) => reply(from, frame.id, false, toBytes(rejected.reason))
            }),
            Effect.ensuring(Effect.sync(() => answering--))
          )
        }
        /** Starts the answer at once (one ready now goes out in this pass), in a fiber the member owns. */
        const startAnswer = (from: Service, frame: QueryFrame, protocol: ProtocolName) => {
          const answering = answer(from, frame, protocol)
          if (answering !== Effect.void) runNow(answering)
        }
        const forTarget = (frame: QueryFrame) => {
          if (frame.targets.length > 0 && !frame.targets.includes(selfId)) {
            stats.drop("filtered")
            return false
          }
          return true
        }

        const receiveQuery = (frame: QueryFrame, protocol: ProtocolName, address: string): Effect.Effect<void> => {
          if (!forTarget(frame)) return Effect.void
          const sighting = { sender: frame.sender, address }
          const known = registry.observeNow(sighting)
          if (known !== undefined) {
            startAnswer(known, frame, protocol)
            return Effect.void
          }
          return Effect.map(registry.observe(sighting), (from) => {
            if (from !== undefined) startAnswer(from, frame, protocol)
          })
        }

        /**
         * A query on the socket's callback, when no traffic waits before it and
         * its sender is known without membership hooks; false: the queue's path.
         */
        const queryNow = (frame: QueryFrame, protocol: ProtocolName, address: string): boolean => {
          if (!forTarget(frame)) return true
          const from = registry.observeNow({ sender: frame.sender, address })
          if (from === undefined) return false
          startAnswer(from, frame, protocol)
          return true
        }

        /** Hands an admitted reply to the query awaiting it (from the socket's callback or the pump); true: handled, dropped or not. */
        const receiveReply = (frame: ReplyFrame, address: string): true => {
          const waiting = pending.get(frame.id)
          const from = registry.observeNow({ sender: frame.sender, address }) ??
            registry.get(serviceId(frame.sender.hostId, frame.sender.name))
          if (waiting === undefined || from === undefined || !waiting.reply(from, frame.ok, frame.data)) {
            stats.drop("unexpected-reply")
          }
          return true
        }

        /**
         * Sends a query to these peers; `on` sees each response or error, then
         * QueryDone once all have answered. Plain code (the round trip's hot
         * path): the query, or why it cannot go. `expected` is who has not
         * answered yet (emptied as answers come), `cancel` forgets the query.
         * Peers whose connection was not ready at once (connects, fallbacks)
         * are sent to from a fiber the member owns.
         */
        const askPeers = (peers: ReadonlyArray<Service>, request: QueryOptions<Targets>, on: (event: QueryEvent) => void) => {
          const data = toBytes(request.data)
          const id = nextId()
          const problem = checkFrame({ _tag: "Query", sender, id, op: request.op, channel: 0, targets: [], data })
          if (problem !== undefined) return new InvalidMessage({ message: problem })
          const expected = new Map(peers.map((p) => [p.id, p]))
          const cancel = () => pending.delete(id)
          if (peers.length === 0) {
            on(new QueryDone())
            return { expected, cancel }
          }
          const settle = (service: Service, event: QueryEvent) => {
            if (!expected.delete(service.id)) return false
            on(event)
            if (expected.size === 0) {
              cancel()
              on(new QueryDone())
            }
            return true
          }
          const at = clock.currentTimeMillisUnsafe() + Duration.toMillis(request.timeout ?? QUERY_TIMEOUT)
          pending.set(id, {
            at,
            reply: (from, ok, bytes) =>
              settle(from, ok ? new QueryResponse({ service: from, data: bytes }) : new QueryError({ service: from, message: new TextDecoder().decode(bytes) })),
            expire: () => on(new QueryTimeout({ missing: [...expected.values()] }))
          })
          queryAlarm.wakeBy(at)
          const frameFor = (peer: Service) => (protocol: ProtocolName): Frame =>
            ({ _tag: "Query", sender, id, op: request.op, channel: 0, targets: protocol === "udp" ? [peer.id] : [], data })
          const later = peers.filter((peer) => deliverNow(peer, frameFor(peer)) === undefined)
          if (later.length > 0) {
            runNow(Effect.forEach(later, (peer) =>
              deliverTo(peer, (protocol) => Effect.succeed(frameFor(peer)(protocol))).pipe(
                Effect.catch((e) => Effect.sync(() => settle(peer, new QueryError({ service: peer, message: e.message }))))
              ), { concurrency: "unbounded", discard: true }))
          }
          return { expected, cancel }
        }

        /** `askPeers` for targets to resolve first. */
        const ask = (request: QueryOptions<Targets>, on: (event: QueryEvent) => void) =>
          Effect.flatMap(targetsOf(request.target as Targets), (peers) => {
            const asked = askPeers(peers, request, on)
            return asked instanceof InvalidMessage ? Effect.fail(asked) : Effect.succeed(asked)
          })

        const query = (request: QueryOptions<Targets>) =>
          Stream.unwrap(
            Effect.gen(function*() {
              const events = yield* Queue.unbounded<QueryEvent>()
              const { cancel } = yield* ask(request, (e) => Queue.offerUnsafe(events, e))
              yield* Effect.addFinalizer(() => Effect.sync(cancel))
              return Stream.fromQueue(events).pipe(
                Stream.takeUntil((e) => e._tag === "QueryDone" || e._tag === "QueryTimeout")
              )
            })
          )

        // The whole answer at once: no stream, no queue, no generator; one
        // wait, ended by the last answer or the query alarm.
        const queryAll = (request: QueryOptions<Targets>) =>
          Effect.flatMap(targetsOf(request.target as Targets), (peers) =>
            Effect.suspend(() => {
              const started = performance.now()
              const result = { responses: new Map<string, QueryResponse>(), errors: new Map<string, QueryError>(), missing: [] as ReadonlyArray<Service>, complete: false }
              let wake: (() => void) | undefined
              let ended = false
              const asked = askPeers(peers, request, (e) => {
                if (e._tag === "QueryResponse") result.responses.set(e.service.id, e)
                else if (e._tag === "QueryError") result.errors.set(e.service.id, e)
                else {
                  if (e._tag === "QueryDone") result.complete = true
                  else result.missing = e.missing
                  ended = true
                  wake?.()
                }
              })
              if (asked instanceof InvalidMessage) return Effect.fail(asked)
              const done = Effect.suspend(() => Effect.as(telemetry.queried((performance.now() - started) / 1000), result as QueryResult))
              return Effect.callback<QueryResult>((resume) => {
                if (ended) return resume(done)
                wake = () => resume(done)
                return Effect.sync(asked.cancel)
              })
            })).pipe((query) => traced(query, "cluster-comm.query", { op: request.op }))

        // Handled on the socket's callback (drops counted): beats from known
        // services at their version (nearly all traffic of an idle cluster);
        // and, when no traffic waits before them (none queued, the message
        // pump idle), queries and replies: a round trip without a pass through
        // the message queue on either side.
        // Admission is checked here once, as the pump checks what it takes.
        transport.handleNow((frame, address, protocol) =>
          frame._tag === "Beat"
            ? !admitted(frame, address) || registry.beatNow(frame.sender, frame.version, address) !== undefined
            : !isTraffic(frame) || messageLine.busy || onCallback !== undefined
            ? false
            : !admitted(frame, address)
            ? true
            : frame._tag === "Reply"
            ? receiveReply(frame, address)
            : frame._tag === "Query"
            ? queryNow(frame, protocol, address)
            : messageNow(frame, protocol, address))

        return Cluster.of({
          self: Effect.sync(discovery.self),
          tags: Effect.sync(() => discovery.self().tags),
          updateTags: (...changes) => discovery.updateTags(changes),
          services,
          ips: Effect.map(services, (all) => [...new Set(all.map((s) => s.address))]),
          resolve,
          query,
          queryAll,
          resolver: (...clauses) =>
            Effect.suspend(() => {
              const test = compileQuery(clauses)
              return test instanceof InvalidQuery ? Effect.fail(test) : Effect.map(services, (all) => all.filter(test))
            }),
          broadcast,
          sendTo,
          sendAll: (target, op, items, send) =>
            Effect.gen(function*() {
              const channel = send?.channel ?? 0
              // Items go out in batch frames (one frame and one decode for many), up
              // to 60 KiB each, or what the peer's first protocol carries in one frame.
              const carrier = transport.protocols.get(orderFor(target)[0]!)
              const cap = Math.min(BATCH_BYTES, (carrier?.maxFrame ?? 0) - 1024)
              let batch: Array<Uint8Array> = []
              let bytes = 0
              let sent = 0
              /** True when the connection took these messages as one batch frame now. */
              const batchNow = (out: ReadonlyArray<Uint8Array>) => {
                // Send hooks see each message: with them, no batches.
                if (!plain(op) || deliverNow(target, () => ({ _tag: "Messages", sender, op, channel, items: out })) === undefined) return false
                for (let i = 0; i < out.length; i++) stats.message("out", op)
                return true
              }
              const flush = Effect.suspend(() => {
                if (batch.length === 0) return Effect.void
                const out = batch
                batch = []
                bytes = 0
                sent += out.length
                if (batchNow(out)) return Effect.void
                // Not now (connecting, or too much unsent): the first goes by sendTo,
                // which waits for the connection (or falls back); then the rest as a batch if it can.
                return sendTo(target, op, out[0]!, send).pipe(
                  Effect.andThen(Effect.suspend(() => {
                    const rest = out.slice(1)
                    return rest.length === 0 || batchNow(rest)
                      ? Effect.void
                      : Effect.forEach(rest, (data) => sendTo(target, op, data, send), { discard: true })
                  }))
                )
              })
              const it = items[Symbol.iterator]()
              for (let next = it.next(); !next.done; next = it.next()) {
                const data = toBytes(next.value)
                if (bytes + data.byteLength + 4 > cap || batch.length === MAX_BATCH_ITEMS) yield* flush
                batch.push(data)
                bytes += data.byteLength + 4
              }
              yield* flush
              return sent
            }),
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
          hook: <A, B, E, R>(point: HookPoint<A, B>, hook: Hook<A, E, R, B>) =>
            Effect.contextWith((context: Context.Context<R>) =>
              point.responds
                // A query hook's value is the response: carry it on as the message's data.
                ? hooks.register(point as unknown as HookPoint<Message>, (query: Message) =>
                  Effect.map(Effect.provide(hook(query as A), context), (answer) => query.with({ data: answer as Data })))
                : hooks.register(point as unknown as HookPoint<A>, (value: A) =>
                  Effect.provide(hook(value), context) as unknown as Effect.Effect<A, E>)
            ),
          events: registry.events,
          // Each batch is a chunk of the stream (flattenIterable would build a stream per batch).
          messages: Stream.fromPubSub(delivered).pipe(Stream.flattenArray),
          stats: stats.snapshot,
          metrics: telemetry.prometheus
        })
      })
    )
}

/** One service given as itself (the common case: no resolving to do). */
const isOneService = (targets: Targets): targets is Service =>
  typeof targets === "object" && !Array.isArray(targets) && !("where" in targets)

/** A hook may hand back a plain object built from a message: make it a Message again. */
const normalize = (m: Message): Message => {
  if (m instanceof Message) return m
  const o = m as Omit<Message, "data"> & { readonly data: Data }
  return new Message(o.op, toBytes(o.data), o.from, o.protocol, o.channel ?? 0)
}

const matches = (s: Service, term: string) => termsOf(s).includes(term)
