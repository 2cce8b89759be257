/**
 * The Tcl package's dialect (bpacket v2), spoken beside the native one by a
 * member with `tcl: true`: on the same group and port, and over a tcp
 * listener of its own that Tcl members connect to (TclLink.ts).
 *
 * Contract:
 * - In: a Tcl packet is decoded once, checked (own sid, filter), translated
 *   into the native frame it means (heartbeat -> Heartbeat or Beat, discovery
 *   -> Probe, disconnect -> Leave, ping -> Ping, query -> Query, response ->
 *   Reply, event -> Message, failed -> Repair) and goes on as a decoded native
 *   frame would: the pipelines, the registry and the hooks see no difference.
 *   What is not a packet is dropped and counted by reason.
 * - Out: every multicast also goes out as its Tcl packet; a frame to a Tcl
 *   peer goes as a Tcl packet with a filter naming the peer, over its tcp
 *   port ("tcp") or the group ("udp"). Native peers are sent to as before.
 * - A Tcl member is a `Service` named by its first tag (else its sid); its
 *   host id is its hid, its instance a hash of its sid. We appear to Tcl
 *   members with our name as our first tag, our hid the eth0 MAC address (the
 *   package with `-remote 0` drops packets whose hid is not its own).
 * - The package sends a heartbeat every 110-140 s and keeps a peer 600 s: a
 *   Tcl peer heard within 600 s is kept alive here on its behalf, beat by
 *   beat, unless a send to it failed (then the usual ping decides).
 * - Nothing received is evaluated: events and queries carry Tcl scripts by
 *   the package's convention; here they are data.
 */
import { fs } from "../../internal/builtins.ts"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import {
  type Bpacket,
  type BpacketField,
  BpacketType,
  type BpacketValue,
  decodeBpacket,
  encodeBpacket
} from "../../schema/Bpacket.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { type JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import type { Frame, Sender } from "../../schema/Frame.ts"
import { type Advertised, type ProtocolName, serviceId } from "../../schema/Service.ts"
import type { Stats } from "../Stats.ts"
import type { Transport } from "../Transport.ts"
import type { InboundQueues } from "../Transport.ts"
import type { UdpProtocol } from "../protocols/Udp.ts"
import { makeTclLink } from "./TclLink.ts"

/** The package's ttl: a peer unheard for this long is gone. */
const TCL_TTL_MS = 600_000
/** Tcl peers remembered at most, and query ids of theirs awaiting our reply. */
const MAX_PEERS = 4096
const MAX_PENDING = 4096

interface TclPeer {
  readonly sid: string
  readonly sender: Sender
  address: string
  tcpPort: number | undefined
  tags: ReadonlyArray<string>
  protocols: ReadonlyArray<Advertised>
  version: number
  heardAt: number
  /** A send to it failed: stop keeping it alive, let the ping decide. */
  suspect: boolean
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i
const SID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

/** Our hid in the Tcl dialect: the eth0 MAC address, as the package reads it; else our host id as a MAC. */
export const tclHostId = (hostId: string): string => {
  try {
    const mac = fs.readFileSync("/sys/class/net/eth0/address", "utf8").trim().toLowerCase()
    if (MAC.test(mac) && mac !== "00:00:00:00:00:00") return mac
  } catch {
    // no eth0: our own host id below
  }
  return hostId.match(/../g)!.join(":")
}

/** Our sid: 8 characters of the package's alphabet, from our instance. */
const sidOf = (instance: string): string =>
  Array.from({ length: 8 }, (_, i) => SID_ALPHABET[Number.parseInt(instance.slice(i * 2, i * 2 + 2), 16) % 62]).join("")

/** A Tcl member's instance (16 hex digits): FNV-1a (64-bit) of its sid. */
const instanceOf = (sid: string): string => {
  let h = 0xcbf29ce484222325n
  for (const b of Buffer.from(sid)) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn
  return h.toString(16).padStart(16, "0")
}

/** A small 16-bit hash of a descriptor, so a changed one reads as a new version. */
const versionOf = (protocols: ReadonlyArray<Advertised>, tags: ReadonlyArray<string>): number => {
  let h = 0x811c9dc5
  for (const c of JSON.stringify([protocols, tags])) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0
  return (h % 65535) + 1
}

/** The tcp port in the package's protoprops (`t {port 41435}`), a Tcl dict held as text. */
const tcpPortOf = (props: string): number | undefined => {
  const m = /(?:^|\s)t\s+\{\s*port\s+(\d{1,5})\s*\}/.exec(props)
  const port = m === null ? NaN : Number(m[1])
  return port >= 1 && port <= 65535 ? port : undefined
}

const utf8 = new TextDecoder()
const EMPTY = new Uint8Array(0)

export const makeTclDialect = (options: {
  readonly config: ClusterConfig
  readonly sender: Sender
  readonly stats: Stats["Service"]
  readonly inbound: InboundQueues
  readonly udp: UdpProtocol
  readonly native: Transport["Service"]
  /** Where the tcp listener binds (loopback for `remote: 0`). */
  readonly host: string
}): Effect.Effect<Transport["Service"], JoinError, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, sender, stats, inbound, udp, native } = options
    const ourSid = sidOf(sender.instance)
    const ourHid = tclHostId(sender.hostId)
    const selfId = serviceId(sender.hostId, sender.name)
    const peers = new Map<string, TclPeer>() // by instance
    const bySid = new Map<string, TclPeer>()
    const byServiceId = new Map<string, TclPeer>()
    // Their queries awaiting our reply: our id for each (sid, ruid).
    const pending = new Map<number, { readonly sid: string; readonly ruid: string }>()
    let nextQuery = 0

    const forget = (peer: TclPeer) => {
      peers.delete(peer.sender.instance)
      bySid.delete(peer.sid)
      byServiceId.delete(serviceId(peer.sender.hostId, peer.sender.name))
    }

    // ---- in ----

    /** Why a packet is refused before translation, or undefined. */
    const refused = (p: Bpacket): "own" | "filtered" | "tcl-unsupported" | undefined => {
      if (p.sid === undefined || p.hid === undefined || p.type === undefined) return "tcl-unsupported"
      if (p.sid === ourSid) return "own"
      if (p.filter !== undefined && p.filter.length > 0) {
        const us = [ourSid, ourHid, sender.name, ...ourTags()]
        if (!p.filter.some((f) => us.includes(f))) return "filtered"
      }
      return undefined
    }

    /** The peer a packet comes from, remembered (and its descriptor updated when it carries one). */
    const peerOf = (p: Bpacket, address: string): TclPeer | undefined => {
      if (!MAC.test(p.hid!) || p.sid!.length === 0 || p.sid!.length > 64) return undefined
      const sid = p.sid!
      let peer = bySid.get(sid)
      const tags = p.tags?.filter((t) => t.length > 0 && Buffer.byteLength(t) <= 64).slice(0, 32)
      if (peer === undefined) {
        if (peers.size >= MAX_PEERS) return undefined
        const name = tags?.[0] ?? sid
        if (Buffer.byteLength(name) > 48) return undefined
        peer = {
          sid,
          sender: { hostId: p.hid!.replaceAll(":", "").toLowerCase(), instance: instanceOf(sid), name },
          address,
          tcpPort: undefined,
          tags: tags ?? [],
          protocols: [],
          version: 0,
          heardAt: Date.now(),
          suspect: false
        }
        peers.set(peer.sender.instance, peer)
        bySid.set(sid, peer)
        byServiceId.set(serviceId(peer.sender.hostId, peer.sender.name), peer)
      }
      peer.address = address
      peer.heardAt = Date.now()
      peer.suspect = false
      const port = p.data === undefined ? undefined : tcpPortOf(utf8.decode(p.data))
      if (port !== undefined || tags !== undefined || peer.version === 0) {
        if (port !== undefined) peer.tcpPort = port
        if (tags !== undefined) peer.tags = tags
        const speaks = p.protocols ?? []
        peer.protocols = [
          ...(peer.tcpPort !== undefined && speaks.includes("t") ? [{ protocol: "tcp" as const, port: peer.tcpPort }] : []),
          { protocol: "udp", port: config.port }
        ]
        peer.version = versionOf(peer.protocols, peer.tags)
      }
      return peer
    }

    const descriptorOf = (peer: TclPeer) => ({ sender: peer.sender, protocols: peer.protocols, tags: peer.tags, version: peer.version })

    /** The native frames a Tcl packet means. */
    const translate = (p: Bpacket, peer: TclPeer): ReadonlyArray<Frame> | "tcl-unsupported" => {
      const sender = peer.sender
      const channel = p.channel ?? 0
      switch (p.type) {
        case BpacketType.heartbeat:
          return p.data !== undefined || p.tags !== undefined
            ? [{ _tag: "Heartbeat", ...descriptorOf(peer) }]
            : [{ _tag: "Beat", sender, version: peer.version }]
        case BpacketType.discovery:
          return [{ _tag: "Probe", ...descriptorOf(peer) }]
        case BpacketType.disconnect:
          forget(peer)
          return [{ _tag: "Leave", sender }]
        case BpacketType.ping: {
          const named = p.data === undefined ? [] : utf8.decode(p.data).split(/\s+/).filter((s) => s.length > 0)
          return named.flatMap((sid): ReadonlyArray<Frame> => {
            if (sid === ourSid) return [{ _tag: "Ping", sender, target: selfId }]
            const other = bySid.get(sid)
            return other === undefined ? [] : [{ _tag: "Ping", sender, target: serviceId(other.sender.hostId, other.sender.name) }]
          })
        }
        case BpacketType.query: {
          if (p.ruid === undefined) return "tcl-unsupported"
          nextQuery = (nextQuery + 1) >>> 0
          if (pending.size >= MAX_PENDING) pending.delete(pending.keys().next().value!)
          pending.set(nextQuery, { sid: peer.sid, ruid: p.ruid })
          return [{ _tag: "Query", sender, id: nextQuery, op: p.op ?? "query", channel, targets: [], data: p.data ?? EMPTY }]
        }
        case BpacketType.response: {
          // Our ruids are `q<sid>#<id>`: the id is ours to match.
          const id = p.ruid === undefined ? NaN : Number(/#(\d+)$/.exec(p.ruid)?.[1])
          if (!Number.isInteger(id)) return "tcl-unsupported"
          return p.error !== undefined
            ? [{ _tag: "Reply", sender, id, ok: false, data: Buffer.from(p.error) }]
            : [{ _tag: "Reply", sender, id, ok: true, data: p.data ?? EMPTY }]
        }
        case BpacketType.event:
          return [{ _tag: "Message", sender, op: p.op ?? "event", channel, targets: [], data: p.data ?? EMPTY }]
        case BpacketType.failed:
          return [{ _tag: "Repair", sender, protocols: ["tcp"] }]
        default:
          return "tcl-unsupported"
      }
    }

    /** One Tcl packet, from a datagram or a stream: decoded, checked, translated, admitted. */
    const receivePacket = (bytes: Uint8Array, protocol: ProtocolName, address: string, port: number): boolean => {
      stats.frameIn(protocol, bytes.byteLength)
      const p = decodeBpacket(bytes, config.maxFrame)
      if (typeof p === "string") {
        stats.drop(p)
        return true
      }
      const why = refused(p)
      if (why !== undefined) {
        stats.drop(why)
        return true
      }
      const peer = peerOf(p, address)
      if (peer === undefined) {
        stats.drop("bpacket-invalid")
        return true
      }
      const frames = translate(p, peer)
      if (typeof frames === "string") {
        stats.drop(frames)
        return true
      }
      let more = true
      for (const frame of frames) more = inbound.admit(frame, protocol, address, port) && more
      return more
    }
    inbound.handleForeign(receivePacket)

    // ---- tcp: a listener of our own, and connections to Tcl peers ----

    const link = yield* makeTclLink({ config, stats, host: options.host, onPacket: (bytes, address) => void receivePacket(bytes, "tcp", address, 0) })
    const tcpPort = link.port
    const writeTcp = (peer: TclPeer, bytes: Uint8Array) => link.write({ address: peer.address, port: peer.tcpPort!, name: peer.sid }, bytes)

    // ---- out ----

    let tags: ReadonlyArray<string> = config.tags
    const ourTags = () => tags
    type Fields = ReadonlyArray<readonly [BpacketField, BpacketValue]>
    /** A packet of ours: the fields the package writes first, then `body`, then a filter naming the peer it is for. */
    const packet = (type: number, body: Fields, to?: string, channel = 0) =>
      encodeBpacket([
        ["sid", ourSid],
        ["hid", ourHid],
        ["type", type],
        ["channel", channel],
        ["protocols", ["t", "c"]],
        ...body,
        ...(to === undefined ? [] : [["filter", [to]] as const])
      ])
    /** How to reach us and who we are, as a heartbeat or a discovery carries it. */
    const descriptor = (): Fields => [["data", `t {port ${tcpPort}}`], ["known", peers.size], ["tags", [sender.name, ...tags]]]
    /** An op the package's own packets lack (`event`, `query`) is left out. */
    const opField = (op: string, implied: string): Fields => (op === implied ? [] : [["op", op]])

    /** A frame as the Tcl packets that mean it; `to` is the peer it is for (a filter names it). */
    const packetsOf = (frame: Frame, to: TclPeer | undefined): ReadonlyArray<Uint8Array> => {
      const filter = to?.sid
      switch (frame._tag) {
        case "Heartbeat":
        case "Answer":
        case "Beat":
          if (frame._tag === "Heartbeat") tags = frame.tags
          return [packet(BpacketType.heartbeat, descriptor(), filter)]
        case "Probe":
          tags = frame.tags
          // As the package joins: a heartbeat, then a discovery.
          return [packet(BpacketType.heartbeat, descriptor(), filter), packet(BpacketType.discovery, descriptor(), filter)]
        case "Leave":
          return [packet(BpacketType.disconnect, [["known", peers.size], ["tags", [sender.name, ...tags]]], filter)]
        case "Ping": {
          const target = byServiceId.get(frame.target)
          return target === undefined ? [] : [packet(BpacketType.ping, [["data", target.sid]], filter)]
        }
        case "Message":
          return [packet(BpacketType.event, [...opField(frame.op, "event"), ["data", frame.data]], filter, frame.channel)]
        case "Messages":
          return frame.items.map((data) => packet(BpacketType.event, [...opField(frame.op, "event"), ["data", data]], filter, frame.channel))
        case "Query":
          return [packet(BpacketType.query, [["ruid", `q${ourSid}#${frame.id}`], ...opField(frame.op, "query"), ["data", frame.data], ["keepalive", true]], filter, frame.channel)]
        case "Reply": {
          const asked = pending.get(frame.id)
          if (asked === undefined) return []
          pending.delete(frame.id)
          const answer: readonly [BpacketField, BpacketValue] = frame.ok ? ["data", frame.data] : ["error", utf8.decode(frame.data)]
          return [packet(BpacketType.response, [["ruid", asked.ruid], ["keepalive", true], answer], asked.sid)]
        }
        case "Repair":
          return [packet(BpacketType.failed, [["data", "protocols t"]], filter)]
        case "Peers":
          return [] // seeds are ours alone: the Tcl package is found by multicast only
      }
    }

    const multicastAll = (packets: ReadonlyArray<Uint8Array>) =>
      Effect.forEach(packets, (bytes) => udp.multicastBytes(bytes), { discard: true })

    const multicast = (frame: Frame) =>
      native.multicast(frame).pipe(
        Effect.andThen(multicastAll(packetsOf(frame, undefined)).pipe(
          Effect.catch((e) => Effect.logDebug(`Tcl packet not multicast: ${e.message}`))
        ))
      )

    const send: Transport["Service"]["send"] = (protocol, to, frame) => {
      const peer = peers.get(to.instance)
      if (peer === undefined) return native.send(protocol, to, frame)
      // A failed send to a Tcl peer: it is left to the ping (the package's, and ours).
      const packets = packetsOf(frame, peer)
      if (packets.length === 0) return Effect.fail(new ProtocolFailure({ protocol, message: `nothing to send to Tcl member ${peer.sid} for ${frame._tag}` }))
      const sending = protocol === "tcp" && peer.tcpPort !== undefined
        ? Effect.forEach(packets, (bytes) => writeTcp(peer, bytes), { discard: true })
        : multicastAll(packets)
      return sending.pipe(Effect.tapError(() => Effect.sync(() => {
        peer.suspect = true
      })))
    }

    // Tcl members beat every 110-140 s and keep a peer 600 s: keep each one
    // heard within that alive here, a beat a heartbeat, unless a send failed.
    yield* Effect.sync(() => {
      const now = Date.now()
      for (const peer of peers.values()) {
        if (now - peer.heardAt > TCL_TTL_MS) {
          forget(peer)
          continue
        }
        if (peer.suspect || peer.version === 0) continue
        inbound.admit({ _tag: "Beat", sender: peer.sender, version: peer.version }, "udp", peer.address, 0)
      }
    }).pipe(Effect.repeat(Schedule.spaced(config.heartbeat)), Effect.forkScoped)

    // The Transport that speaks both dialects, over the native one.
    return {
      ...native,
      multicast,
      send,
      sendNow: (protocol, to, frame) => !peers.has(to.instance) && native.sendNow(protocol, to, frame)
    } satisfies Transport["Service"]
  })
