/**
 * Counters of what passed and what was dropped, by reason. Nothing from the
 * network is lost silently: every drop lands here.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { BpacketFailure } from "../schema/Bpacket.ts"
import type { DecodeFailure } from "../schema/Frame.ts"

/** Why a received frame or message went no further. */
export type DropReason =
  | DecodeFailure
  | BpacketFailure // a Tcl packet (with `tcl: true`) that is not one
  | "tcl-unsupported" // a Tcl packet of a type this member does not act on (flush props), or missing its sid or hid
  | "oversize" // a tcp length prefix above `maxFrame`
  | "own" // our own multicast, looped back
  | "non-local" // from another host while `remote` is 0
  | "filtered" // addressed to other services
  | "channel" // on a channel this member is not on
  | "conflict" // from an instance that lost its id to another live process
  | "hook-rejected" // a receive or service hook cancelled it
  | "queue-full" // the inbound queue was full
  | "subscriber-full" // an `events` subscriber `bufferSize` events behind (a slow `messages` one holds delivery back instead)
  | "unsent" // accepted for a tcp connection that closed before it was written
  | "unexpected-reply" // a reply to no query of ours, or from a service it did not ask
  | "busy" // a query refused because too many are being answered already
  | "unsealed" // a plain frame, while this member has a key
  | "unknown-key" // sealed with a key this member does not have (or it has none)
  | "forged" // sealed, but fails authentication (tampered, or a wrong key)
  | "replayed" // a sealed frame seen before, or too old for the replay window
  | "stale" // a sealed frame whose clock is too far from ours
  | "not-allowed" // from an address outside the `allow` list
  | "spoofed" // claims a live service's id from another address
  | "too-many-connections" // a connection past `maxConnections` or `maxConnectionsPerPeer`, closed at once
  | "registry-full" // a new service while `maxServices` are known
  | "redis-invalid" // a key, script reply or event in Redis that is not a member descriptor of ours

export interface StatsSnapshot {
  readonly framesIn: number
  readonly framesOut: number
  /** Bytes received (as they came off the wire, sealed or not). */
  readonly bytesIn: number
  /** Frames received and sent, by protocol. */
  readonly byProtocol: Readonly<Record<string, { readonly in: number; readonly out: number }>>
  /** Bytes handed to the sockets. */
  readonly bytesOut: number
  /** Messages delivered and sent, by op (at most 256 ops; the rest count as "other"). */
  readonly byOp: Readonly<Record<string, { readonly in: number; readonly out: number }>>
  /** Direct sends that failed on every protocol, and ones that needed a fallback. */
  readonly sendFailures: number
  readonly fallbacks: number
  /** tcp connections accepted from peers, and opened to peers (reused while they live). */
  readonly connectionsAccepted: number
  readonly connectionsOpened: number
  readonly drops: Readonly<Partial<Record<DropReason, number>>>
}

export class Stats extends Context.Service<Stats, {
  /** Counts one drop (synchronous: it runs on the per-frame path). */
  readonly drop: (reason: DropReason) => void
  readonly frameIn: (protocol?: string, bytes?: number) => void
  readonly frameOut: (protocol?: string) => void
  readonly sendFailed: () => void
  readonly wrote: (bytes: number) => void
  readonly message: (direction: "in" | "out", op: string) => void
  readonly fellBack: () => void
  readonly connection: (direction: "accepted" | "opened") => void
  readonly snapshot: Effect.Effect<StatsSnapshot>
}>()("cluster-comm/Stats") {
  static readonly layer = Layer.sync(Stats, () => {
    const drops: Partial<Record<DropReason, number>> = {}
    let framesIn = 0
    let framesOut = 0
    let bytesIn = 0
    let sendFailures = 0
    let fallbacks = 0
    const byProtocol: Record<string, { in: number; out: number }> = {}
    let bytesOut = 0
    const byOp = new Map<string, { in: number; out: number }>()
    const slot = (p: string) => (byProtocol[p] ??= { in: 0, out: 0 })
    let connectionsAccepted = 0
    let connectionsOpened = 0
    return Stats.of({
      drop: (reason) => {
        drops[reason] = (drops[reason] ?? 0) + 1
      },
      frameIn: (protocol, bytes = 0) => {
        framesIn++
        bytesIn += bytes
        if (protocol !== undefined) slot(protocol).in++
      },
      frameOut: (protocol) => {
        framesOut++
        if (protocol !== undefined) slot(protocol).out++
      },
      sendFailed: () => {
        sendFailures++
      },
      wrote: (bytes) => {
        bytesOut += bytes
      },
      message: (direction, op) => {
        // Bounded: ops are chosen by senders, so only the first 256 get their own count.
        let c = byOp.get(op)
        if (c === undefined) {
          const key = byOp.size < 256 ? op : "other"
          c = byOp.get(key) ?? { in: 0, out: 0 }
          byOp.set(key, c)
        }
        c[direction]++
      },
      fellBack: () => {
        fallbacks++
      },
      connection: (direction) => {
        if (direction === "accepted") connectionsAccepted++
        else connectionsOpened++
      },
      snapshot: Effect.sync(() => ({
        framesIn,
        framesOut,
        bytesIn,
        byProtocol: Object.fromEntries(Object.entries(byProtocol).map(([p, c]) => [p, { ...c }])),
        sendFailures,
        fallbacks,
        bytesOut,
        byOp: Object.fromEntries([...byOp].map(([op, c]) => [op, { ...c }])),
        connectionsAccepted,
        connectionsOpened,
        drops: { ...drops }
      }))
    })
  })
}
