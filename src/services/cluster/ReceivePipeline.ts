/**
 * The receive pipeline: decode (Transport) -> drop checks (own, non-local,
 * not allowed, channel, filter) -> service eval -> validate | found
 * (Registry) -> protocol <p> receive -> channel <c> receive -> receive ->
 * op <op> receive -> `messages`.
 *
 * Contract:
 * - Every frame passes the drop checks first; each drop is counted by reason.
 * - Beacons and traffic have queues of their own (Transport), each with a
 *   pump: a slow message consumer never delays membership.
 * - Messages of one sender arrive in order, each through the receive hooks as
 *   if it came alone (a batch's too); a rejecting hook drops that message
 *   only (`hook-rejected`).
 * - Delivered messages are published in batches with backpressure: a slow
 *   subscriber slows the pipeline (and, through paused tcp reads, the
 *   senders) instead of losing messages.
 * - On the socket's callback, when nothing waits before them, beats from
 *   known services and traffic without hooks are handled at once; traffic
 *   never overtakes what a peer sent earlier.
 */
import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as PubSub from "effect/PubSub"
import * as Stream from "effect/Stream"
import { isLocalAddress } from "../../internal/host.ts"
import { allowList } from "../../internal/networks.ts"
import { atTickEnd } from "../../internal/tick.ts"
import type { HookRejected } from "../../schema/Errors.ts"
import { type Frame, isTraffic, type MessageFrame, type MessagesFrame } from "../../schema/Frame.ts"
import { Message, type ProtocolName, type Service, toBytes } from "../../schema/Service.ts"
import { type HookPoint, HookPoint as Points } from "../Hooks.ts"
import type { Inbound, ReturnPath } from "../Protocol.ts"
import type { Data } from "./SendPipeline.ts"
import type { Queries } from "./Queries.ts"
import type { Wiring } from "./Wiring.ts"

/** Receive hook point sets kept made (per protocol, channel and op). */
const MAX_POINT_SETS = 1024

/** The system channel: accepted from this host only. */
export const SYSTEM_CHANNEL = 1

export interface ReceiveOptions {
  /** Frames from other hosts are dropped (multicast with TTL 0, no seeds, no Redis). */
  readonly hostOnly: boolean
  readonly bufferSize: number
  /** CIDRs remote frames must come from (none: any). */
  readonly allow: ReadonlyArray<string>
  /** The channels this member is on (the facade's `channels` changes it). */
  readonly joined: ReadonlySet<number>
}

export const makeReceivePipeline = (
  { transport, registry, discovery, hooks, stats, sender, selfId, runNow, runHooks: run }: Wiring,
  { receiveQuery, queryNow, receiveReply }: Queries,
  options: ReceiveOptions
) =>
  Effect.gen(function*() {
    const { joined } = options
    const allowed = allowList(options.allow)
    // Messages are published in batches (those of one pass of the pipeline):
    // one wake-up of each subscriber per batch, not per message. Bounded with
    // backpressure: a slow subscriber slows the pipeline (and, through paused
    // tcp reads, the senders) instead of losing messages.
    const delivered = yield* PubSub.bounded<Arr.NonEmptyReadonlyArray<Message>>(Math.max(4, Math.ceil(options.bufferSize / 256)))
    yield* Effect.addFinalizer(() => PubSub.shutdown(delivered))

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

    /**
     * Runs each point's hooks in turn, building nothing for points without
     * hooks; hooks that end at once end here, as an Exit (see `runHooks`).
     */
    const through = <A>(points: ReadonlyArray<HookPoint<A>>, value: A): Effect.Effect<A, HookRejected> => {
      let chain: Effect.Effect<A, HookRejected> | undefined
      for (const p of points) {
        if (!hooks.has(p)) continue
        const before: Effect.Effect<A, HookRejected> | undefined = chain
        chain = before === undefined ? run(p, value)
          : isSuccess<A>(before) ? run(p, before.value)
          : Effect.flatMap(before, (v) => run(p, v))
      }
      return chain ?? Effect.succeed(value)
    }
    /** A message through its receive hooks into the batch; one they reject is counted. At once when the hooks were. */
    const pass = (points: ReadonlyArray<HookPoint<Message>>, message: Message): Effect.Effect<void> => {
      const passed = through(points, message)
      if (!Exit.isExit(passed)) {
        return Effect.matchEffect(passed, { onSuccess: (m) => deliver(normalize(m)), onFailure: () => rejected })
      }
      if (isSuccess<Message>(passed)) return deliver(normalize(passed.value))
      // A rejection is counted; anything else (an interruption: no error of a type) goes on as it is.
      const failed = passed as Exit.Failure<never, HookRejected>
      return Cause.findError(failed.cause)._tag === "Success" ? rejected : failed as unknown as Exit.Exit<never>
    }
    const rejected = Effect.sync(() => stats.drop("hook-rejected"))

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
      address: string,
      back: ReturnPath | undefined
    ): Effect.Effect<void> => {
      const sighting = { sender: frame.sender, address }
      const known = registry.observeNow(sighting)
      if (known !== undefined) back?.adopt(known)
      if (known !== undefined && !hooks.anyFor("receive")) {
        for (const data of items) deliver(new Message(frame.op, data, known, protocol, frame.channel))
        return Effect.void
      }
      const points = receivePoints(protocol, frame.channel, frame.op)
      const each = (from: Service | undefined): Effect.Effect<void> =>
        from === undefined ? Effect.void
          // One message (the common case) needs no loop.
          : items.length === 1 ? pass(points, new Message(frame.op, items[0]!, from, protocol, frame.channel))
          : Effect.forEach(items, (data) => pass(points, new Message(frame.op, data, from, protocol, frame.channel)), { discard: true })
      return known !== undefined ? each(known) : Effect.flatMap(registry.observe(sighting), each)
    }

    const receiveMessage = (frame: MessageFrame, protocol: ProtocolName, address: string, back: ReturnPath | undefined) => {
      if (frame.targets.length > 0 && !frame.targets.includes(selfId)) {
        stats.drop("filtered")
        return Effect.void
      }
      return receiveData(frame, [frame.data], protocol, address, back)
    }

    /** The drop checks every frame passes first; true when it may go on. */
    const admitted = (frame: Frame, address: string): boolean => {
      if (frame.sender.instance === sender.instance) {
        stats.drop("own")
        return false
      }
      const local = isLocalAddress(address)
      if (!local) {
        if (options.hostOnly) {
          stats.drop("non-local")
          return false
        }
        if (allowed !== undefined && !allowed(address)) {
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
    const messageNow = (frame: MessageFrame | MessagesFrame, protocol: ProtocolName, address: string, back: ReturnPath | undefined): true => {
      const handling = frame._tag === "Message"
        ? receiveMessage(frame, protocol, address, back)
        : receiveData(frame, frame.items, protocol, address, back)
      if (handling !== Effect.void) holdLine(Effect.andThen(handling, Effect.suspend(publish)))
      else if (!publishing) {
        // Published once the socket's chunk is done: its messages go out as one batch.
        publishing = true
        atTickEnd(endChunk)
      }
      return true
    }
    let publishing = false
    const endChunk = () => {
      publishing = false
      const published = publish()
      if (published !== Effect.void) holdLine(published)
    }

    yield* pump(transport.takeBeacons, ({ frame, address, port, viaGroup }) =>
      isTraffic(frame) ? Effect.void : discovery.handle(frame, address, port, viaGroup))
    yield* pump(transport.takeMessages, ({ frame, protocol, address, back }) =>
      frame._tag === "Message" ? receiveMessage(frame, protocol, address, back) :
      frame._tag === "Messages" ? receiveData(frame, frame.items, protocol, address, back) :
      frame._tag === "Query" ? receiveQuery(frame, protocol, address, back) :
      frame._tag === "Reply" ? Effect.sync(() => receiveReply(frame, address)) :
      Effect.void, messageLine)

    // Handled on the socket's callback (drops counted): beats from known
    // services at their version (nearly all traffic of an idle cluster);
    // and, when no traffic waits before them (none queued, the message
    // pump idle), queries and replies: a round trip without a pass through
    // the message queue on either side.
    // Admission is checked here once, as the pump checks what it takes.
    transport.handleNow((frame, address, protocol, viaGroup, back) =>
      frame._tag === "Beat"
        ? !admitted(frame, address) ||
          registry.beatNow(frame.sender, frame.version, address, viaGroup ? "multicast" : "seeds") !== undefined
        : !isTraffic(frame) || messageLine.busy || onCallback !== undefined
        ? false
        : !admitted(frame, address)
        ? true
        : frame._tag === "Reply"
        ? receiveReply(frame, address)
        : frame._tag === "Query"
        ? queryNow(frame, protocol, address, back)
        : messageNow(frame, protocol, address, back))

    /** Delivered messages, from the moment the stream starts; each batch is a chunk (flattenIterable would build a stream per batch). */
    const messages: Stream.Stream<Message> = Stream.fromPubSub(delivered).pipe(Stream.flattenArray)
    return { messages }
  })

/** A finished success (hooks that ended at once). */
const isSuccess = <A>(effect: Effect.Effect<A, unknown>): effect is Exit.Success<A, unknown> =>
  Exit.isExit(effect) && effect._tag === "Success"

/** A hook may hand back a plain object built from a message: make it a Message again. */
const normalize = (m: Message): Message => {
  if (m instanceof Message) return m
  const o = m as Omit<Message, "data"> & { readonly data: Data }
  return new Message(o.op, toBytes(o.data), o.from, o.protocol, o.channel ?? 0)
}
