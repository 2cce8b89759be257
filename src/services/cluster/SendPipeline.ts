/**
 * The send pipeline: op <op> send -> channel <c> send (once a message) ->
 * protocol <p> send -> send -> encode (Transport), per protocol in the peer's
 * order until one carries the frame.
 *
 * Contract:
 * - `sendTo` tries each target's protocols in its order among those we speak
 *   (for a peer on this host its local-only ones first; udp, a filtered
 *   datagram, when nothing else is left) and reports which one carried the
 *   frame. Every target is tried even if another fails; the first failure is
 *   reported, as `SendFailed` with each attempt's cause.
 * - A failed attempt asks the cluster to check on the peer (a ping); a
 *   delivery reached only by a fallback tells the peer which of its listeners
 *   failed (a repair).
 * - A hook that rejects cancels the message (`HookRejected`), nothing is sent.
 * - With no hooks and the peer's first protocol ready, a message is handed
 *   over synchronously (`deliverNow`): the per-message fast path.
 */
import * as Effect from "effect/Effect"
import { InvalidMessage, type SendAttempt, SendFailed } from "../../schema/Errors.ts"
import { checkFrame, type Frame, MAX_BATCH_ITEMS, MAX_OP_BYTES, type MessageFrame, NO_TARGETS } from "../../schema/Frame.ts"
import { type Advertised, type Delivery, type Outgoing, type ProtocolName, type Service, toBytes } from "../../schema/Service.ts"
import { utf8Length } from "../../schema/WireText.ts"
import { traced } from "../../internal/trace.ts"
import { HookPoint as Points } from "../Hooks.ts"
import { isOneService, type Targets, type TargetsOf } from "./Targets.ts"
import type { Wiring } from "./Wiring.ts"

export type Data = string | Uint8Array

/** Where a message goes besides its targets. */
export interface SendOptions {
  /** The channel (0..65535); default 0. Only members on it accept the message. */
  readonly channel?: number
}

/** The most data a `sendAll` batch frame carries. */
const BATCH_BYTES = 60 * 1024

const NO_SERVICES: ReadonlyArray<Service> = []

export const makeSendPipeline = ({ transport, hooks, stats, discovery, registry, sender }: Wiring, targetsOf: TargetsOf) => {
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
    targets: protocol === "udp" ? targets.map((t) => t.id) : NO_TARGETS,
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

  /**
   * Sends `op` with `data` to every member (on the channel): by multicast to
   * the group, then directly (with fallback) to each member the group does
   * not reach. Like a datagram, a direct copy that fails is not the caller's
   * failure: the peer is pinged and the failure logged.
   */
  const broadcast = (op: string, data: Data, send?: SendOptions) =>
    Effect.suspend(() => {
      const out: Outgoing = { op, data: toBytes(data), channel: send?.channel ?? 0, targets: [], protocol: "udp" }
      return prepared(out).pipe(
        Effect.flatMap((o) =>
          outbound(o, "udp").pipe(
            Effect.flatMap((frame) => transport.multicast(frame)),
            Effect.tap(() => Effect.sync(() => {
              stats.frameOut("udp")
              stats.message("out", op)
            })),
            Effect.andThen(Effect.suspend(() => {
              const beyond = registry.beyondGroup()
              return beyond.length === 0 ? Effect.void : Effect.forEach(beyond, (peer) =>
                deliverTo(peer, (protocol) => outbound(o, protocol)).pipe(
                  Effect.catch((e) => Effect.logDebug(`broadcast to ${peer.id} not delivered: ${e.message}`))
                ), { concurrency: "unbounded", discard: true })
            }))
          )
        )
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

  /**
   * The synchronous path of `deliverTo`: the protocol when the peer's first
   * one took the frame at once. Only connections (tcp, unix) take a frame at
   * once, so `frame` is the frame as a connection carries it (no target filter).
   */
  const deliverNow = (peer: Service, frame: Frame): ProtocolName | undefined => {
    const protocol = orderFor(peer)[0]!
    if (!transport.sendNow(protocol, peer, frame)) return undefined
    stats.frameOut(protocol)
    return protocol
  }

  /** Whether messages with `op` may skip the full send path: no send hooks to run, an op the wire takes. */
  const plain = (op: string): boolean => {
    if (hooks.anyFor("send")) return false
    const opBytes = utf8Length(op)
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
    const protocol = deliverNow(peer, frameOf(op, 0, NO_SERVICES, toBytes(data), "tcp")) // a connection's frame: no targets
    if (protocol === undefined) return undefined
    stats.message("out", op)
    return Effect.succeed([{ service: peer, protocol }])
  }

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

  /**
   * Many messages with one op to one service, in order, in batch frames of up
   * to 60 KiB (one frame to write and decode for many); one `sendTo` each
   * while send hooks run or the connection cannot take a batch now.
   */
  const sendAll = (target: Service, op: string, items: Iterable<Data>, send?: SendOptions) =>
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
        if (!plain(op) || deliverNow(target, { _tag: "Messages", sender, op, channel, items: out }) === undefined) return false
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
    })

  return { broadcast, sendTo, sendAll, deliverTo, deliverNow }
}

export type SendPipeline = ReturnType<typeof makeSendPipeline>
