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
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import { makeAlarm } from "../../internal/alarm.ts"
import { traced } from "../../internal/trace.ts"
import { InvalidMessage } from "../../schema/Errors.ts"
import { checkFrame, type Frame, type QueryFrame, type ReplyFrame } from "../../schema/Frame.ts"
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
import type { SendPipeline } from "./SendPipeline.ts"
import type { Targets, TargetsOf } from "./Targets.ts"
import type { Wiring } from "./Wiring.ts"

/** At most this many queries are answered at once; more are refused as busy. */
const MAX_ANSWERING = 1024

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

export const makeQueries = (
  { registry, hooks, stats, telemetry, sender, selfId, runNow }: Wiring,
  { deliverTo, deliverNow }: SendPipeline,
  targetsOf: TargetsOf
) =>
  Effect.gen(function*() {
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

    // ---- answering ----

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

    /** An admitted query from the message pump. */
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

    return { query, queryAll, receiveQuery, queryNow, receiveReply }
  })

export type Queries = Effect.Success<ReturnType<typeof makeQueries>>
