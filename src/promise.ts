/**
 * cluster-comm for plain Node.js programs: the whole library behind Promises,
 * an EventEmitter and async iterators, with no Effect to learn.
 *
 * ```js
 * import { join, HookPoint } from "cluster-comm/promise"
 *
 * const member = await join("service_three")
 * member.on("message", (m) => console.log(m.text))
 * await member.broadcast("C", "Hello, Foo!")
 * await member.sendTo("service_one", "C", "Hello, Bar!")
 * await member.leave()
 * ```
 *
 * Errors are the Effect API's typed errors, which are `Error` subclasses: a
 * rejection carries the same `_tag` and fields (`JoinError` with `field`,
 * `SendFailed` with `attempts`, ...). Built as one bundled file with its own
 * copy of the Effect modules it needs (`dist/promise.mjs`).
 */
import { events } from "./internal/builtins.ts"
import { aborted, emitting, inspectCustom, nodeStyle, runAbortable } from "./internal/nodeStyle.ts"
// This module's own exports, to name them as exported (see the end).
import * as exported from "./promise.ts"
import type { EventEmitter } from "node:events"
import type { inspect as Inspect, InspectOptions } from "node:util"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ClusterLive, type LiveOptions } from "./layers/ClusterLive.ts"
import type { ClusterConfigInput } from "./schema/Config.ts"
import { HookRejected } from "./schema/Errors.ts"
import type { QueryEvent, QueryOptions, QueryResult } from "./schema/Query.ts"
import type { Clause } from "./schema/Resolver.ts"
import type { ClusterEvent, Delivery, Message, Service } from "./schema/Service.ts"
import type { TagChange } from "./schema/Tags.ts"
import { Cluster, type Data, fastPaths, type SendOptions, type Targets } from "./services/Cluster.ts"
import type { HookPoint } from "./services/Hooks.ts"
import type { KeySpec } from "./services/Keyring.ts"
import type { StatsSnapshot } from "./services/Stats.ts"
import type { SourceStatus } from "./services/Sources.ts"

export type { ClusterConfigInput } from "./schema/Config.ts"
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
export { QueryDone, QueryError, type QueryEvent, type QueryOptions, QueryResponse, type QueryResult, QueryTimeout } from "./schema/Query.ts"
export { type Clause, InvalidQuery } from "./schema/Resolver.ts"
export { type TagChange, TagError } from "./schema/Tags.ts"
export {
  type ClusterEvent,
  type Delivery,
  Message,
  type Outgoing,
  type ProtocolName,
  type Service,
  ServiceConflict,
  ServiceFound,
  ServiceLost,
  ServiceUpdated,
  type SourceName
} from "./schema/Service.ts"
export type { Data, SendOptions, Targets } from "./services/Cluster.ts"
export { HookPoint } from "./services/Hooks.ts"
export { KeyringError, type KeySpec } from "./services/Keyring.ts"
export type { StatsSnapshot } from "./services/Stats.ts"
export type { SourceStatus } from "./services/Sources.ts"

/**
 * A signal to give up on a call, as Node's own APIs take one: aborting it
 * rejects the call with `signal.reason` and stops its work (a join under way,
 * a send waiting for its connection, a query waiting for answers, an iterator).
 */
export interface Abortable {
  readonly signal?: AbortSignal | undefined
}

/** What `join` takes besides the configuration. */
export interface JoinOptions extends LiveOptions, Abortable {
  /**
   * Leave (the leave beacon goes out) when the process gets SIGINT or SIGTERM,
   * then let the signal do what it would have done. Default true.
   */
  readonly leaveOnSignals?: boolean
}

/** A hook as plain code: return the value (changed or not), or a Promise of it; throw to cancel. */
export type PlainHook<A, B = A> = (value: A) => B | Promise<B>

const isPromiseLike = <B>(out: B | Promise<B>): out is Promise<B> =>
  typeof (out as { then?: unknown } | null)?.then === "function"

/** The events a `Member` emits, with what each listener gets. */
export interface MemberEvents {
  found: [service: Service]
  lost: [service: Service, why: "left" | "expired"]
  updated: [service: Service, previous: Service]
  conflict: [service: Service, instances: readonly [kept: string, rejected: string]]
  message: [message: Message]
  /** A discovery source changed state (Redis down, connecting, up again). */
  source: [status: SourceStatus]
}

const signals = ["SIGINT", "SIGTERM"] as const
/** Members that leave on a signal; one handler a signal for all of them. */
const leavingOnSignal = new Set<Member>()
const onSignal = (signal: NodeJS.Signals) => {
  const members = [...leavingOnSignal]
  for (const s of signals) process.off(s, onSignal)
  void Promise.allSettled(members.map((m) => m.leave())).then(() => {
    // Nobody else handles it: do what the signal would have done.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
  })
}

/**
 * A member of the cluster. Reads (`self`, `services()`, `ips()`, `resolve()`)
 * answer at once from what the member knows; everything that goes on the
 * network returns a Promise. Events: `found`, `lost`, `updated`, `conflict`,
 * `message` (delivered messages, once a listener is added).
 */
export class Member extends events.EventEmitter<MemberEvents> {
  readonly #runtime: ManagedRuntime.ManagedRuntime<Cluster, never>
  readonly #cluster: Cluster["Service"]
  #left: Promise<void> | undefined
  #listening = false

  // What `console.log(member)` shows: who it is and what it knows, not its emitter's insides.
  static {
    Object.defineProperty(Member.prototype, inspectCustom, {
      value(this: Member, _depth: number, options: InspectOptions, inspect: typeof Inspect): string {
        const shown = this.#left === undefined ? { id: this.self.id, tags: this.tags, services: this.services().length } : { left: true }
        return `Member ${inspect(shown, options)}`
      }
    })
  }

  /** @internal use `join` */
  constructor(runtime: ManagedRuntime.ManagedRuntime<Cluster, never>, cluster: Cluster["Service"]) {
    super()
    this.#runtime = runtime
    this.#cluster = cluster
    // Membership events are emitted from the start; messages once someone listens (a subscription costs).
    this.#pump(cluster.events, (e) => {
      switch (e._tag) {
        case "ServiceFound":
          return void this.emit("found", e.service)
        case "ServiceLost":
          return void this.emit("lost", e.service, e.why)
        case "ServiceUpdated":
          return void this.emit("updated", e.service, e.previous)
        case "ServiceConflict":
          return void this.emit("conflict", e.service, e.instances)
      }
    })
    this.#pump(cluster.sourceChanges, (status) => void this.emit("source", status))
    ;(this as EventEmitter).on("newListener", (event: string | symbol) => {
      if (event !== "message" || this.#listening) return
      this.#listening = true
      this.#pump(cluster.messages, (m) => void this.emit("message", m))
    })
  }

  #run<A, E>(effect: Effect.Effect<A, E, Cluster>, signal?: AbortSignal): Promise<A> {
    return runAbortable(this.#runtime, effect as Effect.Effect<A, never, Cluster>, signal)
  }
  #now<A>(effect: Effect.Effect<A, never, Cluster>): A {
    return this.#runtime.runSync(effect)
  }
  #pump<A>(stream: Stream.Stream<A>, each: (a: A) => void) {
    this.#runtime.runFork(Stream.runForEach(stream, (a) => Effect.sync(() => emitting(each, a))))
  }

  /** This member as the others see it. */
  get self(): Service {
    return this.#now(this.#cluster.self)
  }
  /** Every service discovered and not yet lost (not this member). */
  services(): ReadonlyArray<Service> {
    return this.#now(this.#cluster.services)
  }
  /** The distinct addresses of those services. */
  ips(): ReadonlyArray<string> {
    return this.#now(this.#cluster.ips)
  }
  /** Services matching every term: a tag, a name, an id, a host id, an address, or `localhost`. */
  resolve(...terms: ReadonlyArray<string>): ReadonlyArray<Service> {
    return this.#now(this.#cluster.resolve(...terms))
  }
  /** Services passing every clause (has, not, exact, some); an invalid one rejects with `InvalidQuery`. */
  resolver(...clauses: ReadonlyArray<Clause>): Promise<ReadonlyArray<Service>> {
    return this.#run(this.#cluster.resolver(...clauses))
  }
  /** Sends `op` with `data` to every member, by multicast. */
  broadcast(op: string, data: Data, options?: SendOptions & Abortable): Promise<void> {
    return this.#run(this.#cluster.broadcast(op, data, options), options?.signal)
  }
  /** Sends to each target (a service, names, tags, or `{ where }`), over its first working protocol; says which. */
  sendTo(targets: Targets, op: string, data: Data, options?: SendOptions & Abortable): Promise<ReadonlyArray<Delivery>> {
    return this.#run(this.#cluster.sendTo(targets, op, data, options), options?.signal)
  }
  /** Many messages with one op to one service, in order, in batch frames; resolves with how many were sent. */
  sendAll(target: Service, op: string, items: Iterable<Data>, options?: SendOptions & Abortable): Promise<number> {
    return this.#run(this.#cluster.sendAll(target, op, items, options), options?.signal)
  }
  /** Asks targets; yields each answer as it comes, then `QueryDone` or `QueryTimeout`. */
  query(request: QueryOptions<Targets> & Abortable): AsyncIterable<QueryEvent> {
    return this.#iterate(this.#cluster.query(request), request.signal)
  }
  /** Asks targets and gathers their answers: responses and errors by service id, and who is missing. */
  queryAll(request: QueryOptions<Targets> & Abortable): Promise<QueryResult> {
    const signal = request.signal
    if (signal !== undefined) return this.#run(this.#cluster.queryAll(request), signal)
    // One service given as itself (a round trip's common case): no fiber, no runtime call.
    const now = this.#left === undefined ? fastPaths.get(this.#cluster)?.queryAllNow : undefined
    if (now !== undefined) {
      let asked = false
      const answer = new Promise<QueryResult>((resolve, reject) => {
        asked = now(request, resolve, reject)
      })
      if (asked) return answer
    }
    return this.#run(this.#cluster.queryAll(request))
  }
  /** This member's tags. */
  get tags(): ReadonlyArray<string> {
    return this.#now(this.#cluster.tags)
  }
  /** Changes this member's tags with the Tcl modifiers; resolves with the new tags. */
  updateTags(...changes: ReadonlyArray<TagChange>): Promise<ReadonlyArray<string>> {
    return this.#run(this.#cluster.updateTags(...changes))
  }
  /** The channels this member is on: join, leave, list. */
  readonly channels = {
    join: (channel: number): Promise<void> => this.#run(this.#cluster.channels.join(channel)),
    leave: (channel: number): Promise<void> => this.#run(this.#cluster.channels.leave(channel)),
    list: (): ReadonlyArray<number> => this.#now(this.#cluster.channels.list)
  }
  /** The keys that seal frames (see docs/security.md). */
  readonly keyring = {
    install: (key: KeySpec): Promise<void> => this.#run(this.#cluster.keyring.install(key)),
    use: (id: number): Promise<void> => this.#run(this.#cluster.keyring.use(id)),
    remove: (id: number): Promise<void> => this.#run(this.#cluster.keyring.remove(id))
  }

  /**
   * Runs `fn` at a hook point (see `HookPoint`): it returns the value, changed
   * or not (or a Promise of it), or throws to cancel that frame (a thrown
   * `HookRejected` keeps its reason). Returns a function that removes it.
   */
  hook<A, B>(point: HookPoint<A, B>, fn: PlainHook<A, B>): () => void {
    const scope = this.#now(Scope.make())
    const rejected = (e: unknown) =>
      e instanceof HookRejected ? e : new HookRejected({ point: point.key, reason: e instanceof Error ? e.message : String(e), cause: e })
    this.#now(this.#cluster.hook(point, (value: A): Effect.Effect<B, HookRejected> => {
      let out: B | Promise<B>
      try {
        out = fn(value)
      } catch (e) {
        return Exit.fail(rejected(e))
      }
      // A plain value is a finished Effect: the hooks then end without a fiber, or a wait for a promise.
      return isPromiseLike(out) ? Effect.tryPromise({ try: () => out, catch: rejected }) : Exit.succeed(out)
    }).pipe(Scope.provide(scope)))
    let removed = false
    return () => {
      if (removed) return
      removed = true
      this.#now(Scope.close(scope, Exit.void))
    }
  }

  /** Delivered messages from now on, as an async iterator (one subscription each). */
  messages(options?: Abortable): AsyncIterable<Message> {
    return this.#iterate(this.#cluster.messages, options?.signal)
  }
  /** Membership events: first a `ServiceFound` for each service already known, then as they happen. */
  events(options?: Abortable): AsyncIterable<ClusterEvent> {
    return this.#iterate(this.#cluster.events, options?.signal)
  }
  #iterate<A, E>(stream: Stream.Stream<A, E>, signal: AbortSignal | undefined): AsyncIterable<A> {
    const until = signal === undefined ? stream : Stream.interruptWhen(stream, aborted(signal))
    return Stream.toAsyncIterableWith(until, this.#now(Effect.context<never>()))
  }

  /** Each discovery source this member runs (multicast, seeds, redis) and its state. */
  sources(): ReadonlyArray<SourceStatus> {
    return this.#now(this.#cluster.sources)
  }

  /** Frames in and out, and drops by reason. */
  stats(): StatsSnapshot {
    return this.#now(this.#cluster.stats)
  }
  /** This member's metrics in the Prometheus text format. */
  metrics(): Promise<string> {
    return this.#run(this.#cluster.metrics)
  }

  /** `await using member = await join(...)`: the member leaves at the end of the block. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.leave()
  }
  /** Leaves the cluster (the others drop this member at once); a second call is harmless. */
  leave(): Promise<void> {
    this.#left ??= (() => {
      leavingOnSignal.delete(this)
      if (leavingOnSignal.size === 0) for (const s of signals) process.off(s, onSignal)
      return this.#runtime.dispose()
    })()
    return this.#left
  }
}

/**
 * Joins the cluster as `name` (or with a full configuration, as `ClusterLive`
 * takes it). Resolves once the member is on the network; a bad configuration,
 * or a port taken by a program that does not share it, rejects with the
 * `JoinError`.
 */
export const join = async (nameOrConfig: string | ClusterConfigInput = {}, options: JoinOptions = {}): Promise<Member> => {
  const runtime = ManagedRuntime.make(ClusterLive(nameOrConfig, options) as Layer.Layer<Cluster, never>)
  let cluster: Cluster["Service"]
  try {
    cluster = await runAbortable(runtime, Cluster.use(Effect.succeed), options.signal)
  } catch (e) {
    await runtime.dispose()
    throw e
  }
  const member = new Member(runtime, cluster)
  if (options.leaveOnSignals ?? true) {
    if (leavingOnSignal.size === 0) for (const s of signals) process.on(s, onSignal)
    leavingOnSignal.add(member)
  }
  return member
}

nodeStyle(exported)
