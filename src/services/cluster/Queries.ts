/**
 * Queries: asking services and streaming their answers, and answering theirs.
 *
 * Contract:
 * - Asking: every target gets the query (over its first protocol at once when
 *   the connection is ready, else through the send pipeline's fallback); each
 *   answer comes once, as a `QueryResponse` or a `QueryError`; then
 *   `QueryDone` when all have answered, or `QueryTimeout` (with who did not)
 *   when the timeout (default 5 s) comes first. A target that cannot be sent
 *   to at all answers with a `QueryError`. Ids are unique among the queries in
 *   flight; a reply nobody waits for is dropped as `unexpected-reply`.
 * - Answering: a query is answered by the `HookPoint.query(op)` hook, in a
 *   fiber of its own (a slow responder holds up no other traffic); no hook
 *   means an error reply, and past 1024 answers in progress a "busy" one.
 * - Timeouts share one alarm: a query arms and clears no timer of its own.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import { makeAlarm } from "../../internal/alarm.ts"
import { boundedMemo } from "../../internal/memo.ts"
import { spanned, tracing } from "../../internal/trace.ts"
import { type HookRejected, InvalidMessage } from "../../schema/Errors.ts"
import { checkFrame, type Frame, NO_TARGETS, type QueryFrame, type ReplyFrame } from "../../schema/Frame.ts"
import {
  QueryDone,
  QueryError,
  type QueryEvent,
  type QueryOptions,
  QueryResponse,
  type QueryResult,
  QueryTimeout
} from "../../schema/Query.ts"
import { Message, type ProtocolName, type Service, serviceId, toBytes } from "../../schema/Service.ts"
import { type HookPoint, HookPoint as Points } from "../Hooks.ts"
import type { ReturnPath } from "../Protocol.ts"
import type { SendPipeline } from "./SendPipeline.ts"
import { isOneService, type Targets, type TargetsOf } from "./Targets.ts"
import type { Wiring } from "./Wiring.ts"

/** At most this many queries are answered at once; more are refused as busy. */
const MAX_ANSWERING = 1024

/** How long a query waits for answers unless it says otherwise. */
const QUERY_TIMEOUT = Duration.seconds(5)
/** The same in milliseconds: converted once, not at every query. */
const QUERY_TIMEOUT_MS = Duration.toMillis(QUERY_TIMEOUT)

/** Carries nothing: one serves every query. */
const DONE = new QueryDone()
const NO_ERRORS: ReadonlyMap<string, QueryError> = new Map()

/**
 * Our queries in flight, by id. Ids are handed out in turn, so each takes a
 * slot of a small ring and a Map holds only one whose slot is still taken:
 * a Map that gains and loses a key every round trip reallocates its table.
 */
class InFlight {
  static readonly SLOTS = 256
  readonly #slots: Array<Asked | undefined> = new Array(InFlight.SLOTS).fill(undefined)
  readonly #more = new Map<number, Asked>()
  get(id: number): Asked | undefined {
    const slot = this.#slots[id % InFlight.SLOTS]
    return slot !== undefined && slot.id === id ? slot : this.#more.get(id)
  }
  has(id: number): boolean {
    return this.get(id) !== undefined
  }
  set(asked: Asked): void {
    const i = asked.id % InFlight.SLOTS
    if (this.#slots[i] === undefined) this.#slots[i] = asked
    else this.#more.set(asked.id, asked)
  }
  delete(id: number): void {
    const i = id % InFlight.SLOTS
    if (this.#slots[i]?.id === id) this.#slots[i] = undefined
    else this.#more.delete(id)
  }
  /** Ends those due by `now`; the next deadline after them. */
  expire(now: number): number {
    let next = Infinity
    const check = (asked: Asked) => {
      if (asked.at <= now) {
        this.delete(asked.id)
        asked.expire()
      } else if (asked.at < next) next = asked.at
    }
    for (const asked of this.#slots) if (asked !== undefined) check(asked)
    for (const asked of [...this.#more.values()]) check(asked)
    return next
  }
}

/** Where a query's answers go, one event at a time: an object, so that a query needs no closure for it. */
interface Listener {
  event(event: QueryEvent): void
}

/**
 * A query of ours awaiting answers: who has not answered yet, and where the
 * answers go. A class, so that a query allocates one object, not a closure a
 * step (the round trip's hot path).
 */
class Asked {
  readonly id: number
  /** When it times out (the member's clock, in milliseconds). */
  readonly at: number
  /** Who has not answered yet, emptied as answers come: one service (the common case) needs no Map. */
  #one: Service | undefined
  readonly #many: Map<string, Service> | undefined
  readonly #pending: InFlight
  readonly #on: Listener
  constructor(id: number, at: number, peers: ReadonlyArray<Service>, pending: InFlight, on: Listener) {
    this.id = id
    this.at = at
    if (peers.length === 1) this.#one = peers[0]
    else if (peers.length > 1) {
      this.#many = new Map()
      for (const p of peers) this.#many.set(p.id, p)
    }
    this.#pending = pending
    this.#on = on
  }
  /** Forgets the query: later answers are unexpected. */
  cancel(): void {
    this.#pending.delete(this.id)
  }
  /** One service's answer; false when none was expected from it. */
  settle(service: Service, event: QueryEvent): boolean {
    if (this.#one !== undefined && this.#one.id === service.id) this.#one = undefined
    else if (this.#many === undefined || !this.#many.delete(service.id)) return false
    this.#on.event(event)
    if (this.#one === undefined && (this.#many === undefined || this.#many.size === 0)) {
      this.cancel()
      this.#on.event(DONE)
    }
    return true
  }
  /** Takes a reply from `from`. */
  reply(from: Service, ok: boolean, data: Uint8Array): boolean {
    return this.settle(from, ok ? new QueryResponse({ service: from, data }) : new QueryError({ service: from, message: new TextDecoder().decode(data) }))
  }
  /** The deadline came first. */
  expire(): void {
    this.#on.event(new QueryTimeout({ missing: this.#one !== undefined ? [this.#one] : [...(this.#many?.values() ?? [])] }))
  }
}

/**
 * One `queryAll`'s answers as they come, handed on whole once all are in or
 * the timeout came: to `end` (the Promise API's), else to the fiber that
 * waits (`resume`), else kept for the asker that finds the query over at once.
 */
class Gathering implements Listener {
  readonly #started = performance.now()
  // Errors are rare: their Map is made with the first (until then, a shared empty one).
  readonly #result = { responses: new Map<string, QueryResponse>(), errors: NO_ERRORS as Map<string, QueryError>, missing: [] as ReadonlyArray<Service>, complete: false }
  readonly #queried: (seconds: number) => void
  readonly #end: ((result: QueryResult) => void) | undefined
  /** The waiting fiber's wake-up. */
  resume: ((exit: Exit.Exit<QueryResult>) => void) | undefined
  /** The whole answer, when it came before anyone waited for it. */
  ended: QueryResult | undefined
  constructor(queried: (seconds: number) => void, end?: (result: QueryResult) => void) {
    this.#queried = queried
    this.#end = end
  }
  event(e: QueryEvent): void {
    const result = this.#result
    if (e._tag === "QueryResponse") result.responses.set(e.service.id, e)
    else if (e._tag === "QueryError") (result.errors === NO_ERRORS ? (result.errors = new Map()) : result.errors).set(e.service.id, e)
    else {
      if (e._tag === "QueryDone") result.complete = true
      else result.missing = e.missing
      const seconds = (performance.now() - this.#started) / 1000
      // The asker first: a fiber resumed here runs on to its next query's write, which the histogram need not hold up.
      if (this.#end !== undefined) this.#end(result)
      else if (this.resume !== undefined) this.resume(Exit.succeed(result))
      else this.ended = result
      this.#queried(seconds)
    }
  }
}

export const makeQueries = (
  { registry, hooks, stats, telemetry, sender, selfId, runNow, tracing: spans, runHooks }: Wiring,
  { deliverTo, deliverNow }: SendPipeline,
  targetsOf: TargetsOf
) =>
  Effect.gen(function*() {
    /** Queries of ours awaiting answers, by request id: a reply's handler, and the deadline. */
    const pending = new InFlight()
    // One alarm for all their timeouts: a query arms and clears no timer of its own.
    const clock = yield* Clock.Clock
    const queryAlarm = yield* makeAlarm((now) =>
      Effect.sync(() => pending.expire(now)), 0)
    let lastId = 0
    const nextId = () => {
      do lastId = (lastId + 1) >>> 0
      while (lastId === 0 || pending.has(lastId))
      return lastId
    }

    // ---- answering ----

    let answering = 0

    const reply = (to: Service, id: number, ok: boolean, data: Uint8Array): Effect.Effect<void> => {
      const frame: Frame = { _tag: "Reply", sender, id, ok, data }
      if (deliverNow(to, frame) !== undefined) return Effect.void
      return deliverTo(to, () => Effect.succeed(frame)).pipe(
        Effect.catch((e) => Effect.logDebug(`reply to ${to.id} not sent: ${e.message}`))
      )
    }

    // The query hook point of each op, made once (bounded: ops come from the network).
    const queryPoint = boundedMemo(1024, (op: string) => Points.query(op) as unknown as HookPoint<Message>)

    /**
     * Starts the answer at once; the reply leaves when its verdict is in: in
     * this pass when the hooks end at once (without a fiber when each hands
     * back a finished Effect and no spans are made), else when the fiber the
     * member runs them in does (a slow responder holds up no other traffic).
     */
    const startAnswer = (from: Service, frame: QueryFrame, protocol: ProtocolName, back: ReturnPath | undefined): void => {
      // The reply (and whatever else goes to the asker) may go back on the query's connection.
      back?.adopt(from)
      const point = queryPoint(frame.op)
      if (!hooks.has(point)) {
        send(reply(from, frame.id, false, toBytes(`no responder for op ${frame.op}`)))
        return
      }
      // Bounded: past this many answers in progress, say so rather than queue.
      if (answering >= MAX_ANSWERING) {
        stats.drop("busy")
        send(reply(from, frame.id, false, toBytes("busy")))
        return
      }
      answering++
      const query = new Message(frame.op, frame.data, from, protocol, frame.channel)
      const now = runHooks(point, query)
      if (Exit.isExit(now)) {
        answered(from, frame.id, now as Exit.Exit<Message, HookRejected>)
        return
      }
      const fiber = runNow(Effect.exit(now))
      const ended = fiber.pollUnsafe()
      if (ended !== undefined) answered(from, frame.id, verdictOf(ended))
      else fiber.addObserver((ended) => answered(from, frame.id, verdictOf(ended)))
    }
    /** The verdict in an answer's fiber's end; undefined when it was interrupted (the member leaving). */
    const verdictOf = (ended: Exit.Exit<Exit.Exit<Message, HookRejected>>) => ended._tag === "Success" ? ended.value : undefined
    /** The hooks' verdict: the answer, or the rejection's reason (none: no reply). */
    const answered = (from: Service, id: number, verdict: Exit.Exit<Message, HookRejected> | undefined): void => {
      answering--
      if (verdict === undefined) return
      if (verdict._tag === "Success") send(reply(from, id, true, verdict.value.data))
      else {
        const rejected = Cause.findError(verdict.cause)
        if (rejected._tag === "Success") send(reply(from, id, false, toBytes(rejected.success.reason)))
      }
    }
    /** A reply that could not leave at once goes on in a fiber of its own. */
    const send = (replying: Effect.Effect<void>): void => {
      if (replying !== Effect.void) runNow(replying)
    }
    const forTarget = (frame: QueryFrame) => {
      if (frame.targets.length > 0 && !frame.targets.includes(selfId)) {
        stats.drop("filtered")
        return false
      }
      return true
    }

    /** An admitted query from the message pump. */
    const receiveQuery = (frame: QueryFrame, protocol: ProtocolName, address: string, back: ReturnPath | undefined): Effect.Effect<void> => {
      if (!forTarget(frame)) return Effect.void
      const sighting = { sender: frame.sender, address }
      const known = registry.observeNow(sighting)
      if (known !== undefined) {
        startAnswer(known, frame, protocol, back)
        return Effect.void
      }
      return Effect.map(registry.observe(sighting), (from) => {
        if (from !== undefined) startAnswer(from, frame, protocol, back)
      })
    }

    /**
     * A query on the socket's callback, when no traffic waits before it and
     * its sender is known without membership hooks; false: the queue's path.
     */
    const queryNow = (frame: QueryFrame, protocol: ProtocolName, address: string, back: ReturnPath | undefined): boolean => {
      if (!forTarget(frame)) return true
      const from = registry.observeNow({ sender: frame.sender, address })
      if (from === undefined) return false
      startAnswer(from, frame, protocol, back)
      return true
    }

    // ---- asking ----

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
     * path): the query awaiting answers, or why it cannot go. Peers whose
     * connection was not ready at once (connects, fallbacks) are sent to
     * from a fiber the member owns.
     */
    const askPeers = (peers: ReadonlyArray<Service>, request: QueryOptions<Targets>, on: Listener) => {
      const data = toBytes(request.data)
      // The frame, made once: checked, then sent as it is over a connection (a datagram adds its target).
      const frame: QueryFrame = { _tag: "Query", sender, id: nextId(), op: request.op, channel: 0, targets: NO_TARGETS, data }
      const problem = checkFrame(frame)
      if (problem !== undefined) return new InvalidMessage({ message: problem })
      const at = clock.currentTimeMillisUnsafe() + (request.timeout === undefined ? QUERY_TIMEOUT_MS : Duration.toMillis(request.timeout))
      const asked = new Asked(frame.id, at, peers, pending, on)
      if (peers.length === 0) {
        on.event(DONE)
        return asked
      }
      pending.set(asked)
      queryAlarm.wakeBy(at)
      let later: Array<Service> | undefined
      for (const peer of peers) {
        if (deliverNow(peer, frame) === undefined) (later ??= []).push(peer)
      }
      if (later !== undefined) askLater(later, frame, asked)
      return asked
    }
    /** Peers whose connection was not ready at once, from a fiber the member owns (apart: the common path makes no closure). */
    const askLater = (later: ReadonlyArray<Service>, frame: QueryFrame, asked: Asked) =>
      runNow(Effect.forEach(later, (peer) =>
        // Over a connection the frame goes as it is; a datagram names its target.
        deliverTo(peer, (protocol): Effect.Effect<Frame> => Effect.succeed(protocol === "udp" ? { ...frame, targets: [peer.id] } : frame)).pipe(
          Effect.catch((e) => Effect.sync(() => asked.settle(peer, new QueryError({ service: peer, message: e.message }))))
        ), { concurrency: "unbounded", discard: true }))

    /** `askPeers` for targets to resolve first. */
    const ask = (request: QueryOptions<Targets>, on: Listener) =>
      Effect.flatMap(targetsOf(request.target as Targets), (peers) => {
        const asked = askPeers(peers, request, on)
        return asked instanceof InvalidMessage ? Effect.fail(asked) : Effect.succeed(asked)
      })

    const query = (request: QueryOptions<Targets>) =>
      Stream.unwrap(
        Effect.gen(function*() {
          const events = yield* Queue.unbounded<QueryEvent>()
          const asked = yield* ask(request, { event: (e) => Queue.offerUnsafe(events, e) })
          yield* Effect.addFinalizer(() => Effect.sync(() => asked.cancel()))
          return Stream.fromQueue(events).pipe(
            Stream.takeUntil((e) => e._tag === "QueryDone" || e._tag === "QueryTimeout")
          )
        })
      )

    // The whole answer at once: no stream, no queue, no generator; one
    // wait, ended by the last answer or the query alarm.
    const queryAll = (request: QueryOptions<Targets>) => Effect.withFiber((fiber) => queryAllIn(fiber, request))
    /** `queryAll` from a fiber at hand (Cluster's accessor has one), without a `withFiber` of its own. */
    const queryAllIn = (fiber: Fiber.Fiber<unknown, unknown>, request: QueryOptions<Targets>) =>
      // One service given as itself (the common case) needs no resolving.
      isOneService(request.target as Targets)
        ? gatherIn(fiber, [request.target as Service], request)
        : Effect.flatMap(targetsOf(request.target as Targets), (peers) => gatherIn(fiber, peers, request))
    /** Asks these peers and gathers every answer (or who is missing at the timeout); a span only with a tracer installed. */
    const gatherIn = (fiber: Fiber.Fiber<unknown, unknown>, peers: ReadonlyArray<Service>, request: QueryOptions<Targets>) =>
      tracing(fiber)
        ? spanned(Effect.suspend(() => gathering(peers, request)), "cluster-comm.query", { op: request.op })
        : gathering(peers, request)
    const gathering = (peers: ReadonlyArray<Service>, request: QueryOptions<Targets>): Effect.Effect<QueryResult, InvalidMessage> => {
      const gathered = new Gathering(telemetry.queried)
      const asked = askPeers(peers, request, gathered)
      if (asked instanceof InvalidMessage) return Effect.fail(asked)
      if (gathered.ended !== undefined) return Exit.succeed(gathered.ended)
      return Effect.callback<QueryResult>((resume) => {
        gathered.resume = resume
        return Effect.sync(() => asked.cancel())
      })
    }

    /**
     * `queryAll` without a fiber, for the Promise API: when the target is one
     * service given as itself and the member makes no spans. False: it does
     * not apply (run `queryAll`); else `end` gets the answer, or `fail` why
     * the query could not go (a promise's own resolve and reject: no closure).
     */
    const queryAllNow = (
      request: QueryOptions<Targets>,
      end: (result: QueryResult) => void,
      fail: (error: InvalidMessage) => void
    ): boolean => {
      if (spans || !isOneService(request.target as Targets)) return false
      const asked = askPeers([request.target as Service], request, new Gathering(telemetry.queried, end))
      if (asked instanceof InvalidMessage) fail(asked)
      return true
    }

    return { query, queryAll, queryAllIn, queryAllNow, receiveQuery, queryNow, receiveReply }
  })

export type Queries = Effect.Success<ReturnType<typeof makeQueries>>
