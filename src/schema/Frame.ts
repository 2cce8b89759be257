/**
 * Wire frames: the single definition of what crosses the network.
 *
 * Every frame starts with the same 19-byte header plus the sender's name:
 *
 * | offset | size | field                                         |
 * | ------ | ---- | --------------------------------------------- |
 * | 0      | 1    | magic `0xCC`                                  |
 * | 1      | 1    | version (1)                                   |
 * | 2      | 1    | kind: 1 heartbeat, 2 probe, 3 answer, 4 leave, 5 message, 6 query, 7 reply, 8 ping, 9 repair, 10 beat, 11 batch |
 * | 3      | 1    | flags (reserved, 0)                           |
 * | 4      | 6    | sender host id (12 hex digits as 6 bytes)     |
 * | 10     | 8    | sender instance (random per process)          |
 * | 18     | 1    | sender name length N (1..48)                  |
 * | 19     | N    | sender name, UTF-8                            |
 *
 * Heartbeat, probe and answer then carry the protocols the sender speaks, in
 * its order of preference: a count K (0..8) and K entries of
 * `u8 protocol (1 tcp, 2 udp), u16 port`; then its tags: a count T (0..32)
 * and T entries of `u8 length (1..64), UTF-8`; then a `u16` descriptor
 * version, which changes whenever protocols, ports or tags do. A leave carries
 * nothing more.
 * A beat (the periodic heartbeat) is short: magic, version, kind, flags, host
 * id, instance and the descriptor version, 20 bytes, no name: receivers know
 * the instance, and ask for the full descriptor when they do not or the
 * version moved.
 * A message carries `u8 op length (1..32), op, u16 channel, u8 target count T
 * (0..32)`, T targets of `6 bytes host id, u8 name length, name`, then the data
 * up to the end of the frame (the datagram, or the tcp length prefix, delimits it).
 * A batch (kind 11, what `sendAll` sends over a connection) is many messages
 * with one op and channel: `u8 op length, op, u16 channel, u32 count (1..65535)`,
 * then each message as `u32 length, data`; no targets (a connection is its own target).
 * A repair lists protocols (`u8` count, `u8` ids) by which a peer could not
 * reach the recipient. A ping names a service (`6 bytes host id, u8 name length, name`) that some
 * member could not reach. A query is a message preceded by a `u32` request id; a reply carries `u32`
 * request id, `u8` status (0 response, 1 error), then the data (for an error,
 * its message in UTF-8) to the end.
 *
 * All integers are big-endian. The codec below is plain synchronous code (it
 * runs once per frame); `FrameFromBytes` in `cluster-comm/schema` exposes it as
 * a Schema transformation.
 */
import { net } from "../internal/builtins.ts"
import type { Advertised, ProtocolName } from "./Service.ts"
import { readUtf8, sameBytes, utf8Length, writeUtf8 } from "./WireText.ts"

export const MAGIC = 0xcc
export const VERSION = 1
export const HEADER_SIZE = 19
export const MAX_NAME_BYTES = 48
export const MAX_OP_BYTES = 32
export const MAX_TARGETS = 32
export const MAX_PROTOCOLS = 8
export const MAX_TAGS = 32
export const MAX_TAG_BYTES = 64
export const MAX_BATCH_ITEMS = 65535
export const BEAT_SIZE = 20
/** A host id as written: 12 lower-case hex digits (6 bytes on the wire). */
export const HOST_ID = /^[0-9a-f]{12}$/
/** An instance id as written: 16 lower-case hex digits (8 bytes on the wire). */
export const INSTANCE_ID = /^[0-9a-f]{16}$/

/** The targets of a frame over a connection: none (the connection is the filter); one array for all. */
export const NO_TARGETS: ReadonlyArray<string> = []

// The frames as plain types: the codec below is all a member runs. Their
// Schemas (with the field checks) are in Schemas.ts, `cluster-comm/schema`.

/** Who sent a frame: host id (12 hex digits), instance (16 hex digits), name. */
export interface Sender {
  readonly hostId: string
  readonly instance: string
  readonly name: string
}

interface BeaconFields {
  readonly sender: Sender
  readonly protocols: ReadonlyArray<Advertised>
  readonly tags: ReadonlyArray<string>
  readonly version: number
}
/** Periodic "I am alive, reach me here". */
export interface Heartbeat extends BeaconFields {
  readonly _tag: "Heartbeat"
}
/** Sent once at join: every member answers it directly with an `Answer`. */
export interface Probe extends BeaconFields {
  readonly _tag: "Probe"
}
/** A member's direct reply to a probe: its own descriptor. */
export interface Answer extends BeaconFields {
  readonly _tag: "Answer"
}
/** Sent when a member's scope closes, so peers drop it at once. */
export interface Leave {
  readonly _tag: "Leave"
  readonly sender: Sender
}
interface MessageFields {
  readonly sender: Sender
  readonly op: string
  readonly channel: number
  readonly targets: ReadonlyArray<string>
  readonly data: Uint8Array
}
/** An op-coded message; non-empty `targets` (service ids) means only they accept it. */
export interface MessageFrame extends MessageFields {
  readonly _tag: "Message"
}
/** Many messages of one op and channel from one sender, in order: `sendAll`'s frame. */
export interface MessagesFrame {
  readonly _tag: "Messages"
  readonly sender: Sender
  readonly op: string
  readonly channel: number
  readonly items: ReadonlyArray<Uint8Array>
}
/** The periodic "still here": who (no name: empty) and which descriptor version. */
export interface Beat {
  readonly _tag: "Beat"
  readonly sender: Sender
  readonly version: number
}
/** A request whose targets each answer with a `Reply` carrying the same id. */
export interface QueryFrame extends MessageFields {
  readonly _tag: "Query"
  readonly id: number
}
/** The answer to a query: a response, or (ok false) an error message. */
export interface ReplyFrame {
  readonly _tag: "Reply"
  readonly sender: Sender
  readonly id: number
  readonly ok: boolean
  readonly data: Uint8Array
}
/** "I could not reach this service": peers shorten its ttl, and the service, if alive, beats at once. */
export interface Ping {
  readonly _tag: "Ping"
  readonly sender: Sender
  readonly target: string
}
/** "I could only reach you by a fallback: these listeners of yours failed me." */
export interface Repair {
  readonly _tag: "Repair"
  readonly sender: Sender
  readonly protocols: ReadonlyArray<string>
}

/**
 * "These are the members I know beyond the group": a seed tells a member that
 * probed it where the others are (IPv4 address and udp port each), so the
 * member probes them too and a static seed list finds the whole cluster.
 */
export interface Peers {
  readonly _tag: "Peers"
  readonly sender: Sender
  readonly endpoints: ReadonlyArray<{ readonly address: string; readonly port: number }>
}
/** At most this many endpoints in one Peers frame (a seed sends several when it knows more). */
export const MAX_PEERS = 64

/** Every frame on the wire. */
export type Frame = Heartbeat | Probe | Answer | Leave | MessageFrame | QueryFrame | ReplyFrame | Ping | Repair | Beat | MessagesFrame | Peers
export type Beacon = Heartbeat | Probe | Answer

/** Why a frame from the network was not accepted; every reason is counted. */
export type DecodeFailure =
  | "truncated"
  | "bad-magic"
  | "unknown-version"
  | "unknown-kind"
  | "invalid-field"
  | "trailing-bytes"

const KIND = { Heartbeat: 1, Probe: 2, Answer: 3, Leave: 4, Message: 5, Query: 6, Reply: 7, Ping: 8, Repair: 9, Beat: 10, Messages: 11, Peers: 12 } as const
const TAG = [undefined, "Heartbeat", "Probe", "Answer", "Leave", "Message", "Query", "Reply", "Ping", "Repair", "Beat", "Messages", "Peers"] as const
// Protocol ids on the wire. Plug-ins add theirs (16..255) when a member opens them.
const PROTOCOL_ID = new Map<ProtocolName, number>([["tcp", 1], ["udp", 2], ["unix", 3]])
const PROTOCOL_BY_ID: Array<ProtocolName | undefined> = [undefined, "tcp", "udp", "unix"]

/** Records a plug-in's wire id; says why not when it clashes with another protocol's. */
export const registerProtocolId = (name: ProtocolName, id: number): string | undefined => {
  if (!Number.isInteger(id) || id < 1 || id > 255) return `protocol ${name}: id ${id} is not 1..255`
  const byId = PROTOCOL_BY_ID[id]
  const byName = PROTOCOL_ID.get(name)
  if ((byId !== undefined && byId !== name) || (byName !== undefined && byName !== id)) {
    return `protocol ${name} (id ${id}) clashes with ${byId ?? name} (id ${byName ?? id})`
  }
  PROTOCOL_ID.set(name, id)
  PROTOCOL_BY_ID[id] = name
  return undefined
}

const writeHostId = (buf: Buffer, at: number, hostId: string) => buf.write(hostId, at, 6, "hex")

const idParts = (id: string): [hostId: string, name: string] => {
  const at = id.indexOf("@")
  return [id.slice(0, at), id.slice(at + 1)]
}

/** The encoded size of a frame, without any headroom. */
export const frameSize = (frame: Frame): number => {
  if (frame._tag === "Beat") return BEAT_SIZE
  let size = headerOf(frame.sender).length
  switch (frame._tag) {
    case "Leave":
      return size
    case "Query":
    case "Message":
      // A query is a message with a u32 id in front.
      if (frame._tag === "Query") size += 4
      size += 1 + utf8Length(frame.op) + 2 + 1 + frame.data.byteLength
      for (const t of frame.targets) size += 6 + 1 + utf8Length(idParts(t)[1])
      return size
    case "Reply":
      return size + 5 + frame.data.byteLength
    case "Messages":
      size += 1 + utf8Length(frame.op) + 2 + 4 + 4 * frame.items.length
      for (const item of frame.items) size += item.byteLength
      return size
    case "Ping":
      return size + 6 + 1 + utf8Length(idParts(frame.target)[1])
    case "Repair":
      return size + 1 + frame.protocols.length
    case "Peers":
      return size + 1 + 6 * frame.endpoints.length
    default:
      size += 1 + 3 * frame.protocols.length + 1 + 2
      for (const t of frame.tags) size += 1 + utf8Length(t)
      return size
  }
}

/**
 * The common header of a sender's frames (magic, version, kind 0, flags,
 * host id, instance, name), built once per sender object: a member's frames
 * all share one sender, so the hex and UTF-8 work is done once, not per frame.
 */
const headers = new WeakMap<Sender, Buffer>()
const headerOf = (sender: Sender): Buffer => {
  let head = headers.get(sender)
  if (head === undefined) {
    const nameBytes = Buffer.from(sender.name, "utf8")
    head = Buffer.alloc(HEADER_SIZE + nameBytes.length)
    head[0] = MAGIC
    head[1] = VERSION
    writeHostId(head, 4, sender.hostId)
    head.write(sender.instance, 10, 8, "hex")
    head[18] = nameBytes.length
    nameBytes.copy(head, HEADER_SIZE)
    headers.set(sender, head)
  }
  return head
}

/**
 * Encodes a frame. `headroom` bytes are left free at the start (tcp writes its
 * length prefix there, so a frame goes out in one write without a copy).
 * Callers pass frames they built themselves; limits are checked by `checkFrame`.
 */
export const encodeFrame = (frame: Frame, headroom = 0): Buffer => {
  const size = frameSize(frame)
  const buf = Buffer.allocUnsafe(headroom + size)
  encodeFrameInto(frame, buf, headroom)
  return buf
}

/**
 * Encodes a frame into `buf` at `start`, which must have room for its
 * `frameSize`: stream protocols write frames back to back into buffers they reuse.
 */
export const encodeFrameInto = (frame: Frame, buf: Buffer, start: number): void => {
  if (frame._tag === "Beat") {
    let at = start
    buf[at++] = MAGIC
    buf[at++] = VERSION
    buf[at++] = KIND.Beat
    buf[at++] = 0
    writeHostId(buf, at, frame.sender.hostId)
    buf.write(frame.sender.instance, at + 6, 8, "hex")
    buf.writeUInt16BE(frame.version, at + 14)
    return
  }
  const head = headerOf(frame.sender)
  head.copy(buf, start)
  buf[start + 2] = KIND[frame._tag]
  let at = start + head.length
  switch (frame._tag) {
    case "Leave":
      break
    case "Repair":
      buf[at++] = frame.protocols.length
      for (const p of frame.protocols) buf[at++] = PROTOCOL_ID.get(p) ?? 0
      break
    case "Peers":
      buf[at++] = frame.endpoints.length
      for (const e of frame.endpoints) {
        for (const octet of e.address.split(".")) buf[at++] = Number(octet)
        buf.writeUInt16BE(e.port, at)
        at += 2
      }
      break
    case "Ping": {
      const [hostId, name] = idParts(frame.target)
      writeHostId(buf, at, hostId)
      buf[at + 6] = writeUtf8(buf, name, at + 7)
      break
    }
    case "Reply":
      buf.writeUInt32BE(frame.id, at)
      buf[at + 4] = frame.ok ? 0 : 1
      buf.set(frame.data, at + 5)
      break
    case "Messages": {
      const opLen = writeUtf8(buf, frame.op, at + 1)
      buf[at] = opLen
      at += 1 + opLen
      buf.writeUInt16BE(frame.channel, at)
      buf.writeUInt32BE(frame.items.length, at + 2)
      at += 6
      for (const item of frame.items) {
        buf.writeUInt32BE(item.byteLength, at)
        buf.set(item, at + 4)
        at += 4 + item.byteLength
      }
      break
    }
    case "Query":
    case "Message": {
      if (frame._tag === "Query") {
        buf.writeUInt32BE(frame.id, at)
        at += 4
      }
      const opLen = writeUtf8(buf, frame.op, at + 1)
      buf[at] = opLen
      at += 1 + opLen
      buf.writeUInt16BE(frame.channel, at)
      at += 2
      buf[at++] = frame.targets.length
      for (const t of frame.targets) {
        const [hostId, name] = idParts(t)
        writeHostId(buf, at, hostId)
        at += 6
        const len = writeUtf8(buf, name, at + 1)
        buf[at] = len
        at += 1 + len
      }
      buf.set(frame.data, at)
      break
    }
    default:
      buf[at++] = frame.protocols.length
      for (const p of frame.protocols) {
        buf[at++] = PROTOCOL_ID.get(p.protocol) ?? 0
        buf.writeUInt16BE(p.port, at)
        at += 2
      }
      buf[at++] = frame.tags.length
      for (const t of frame.tags) {
        const len = writeUtf8(buf, t, at + 1)
        buf[at] = len
        at += 1 + len
      }
      buf.writeUInt16BE(frame.version, at)
  }
}

/** Why a frame we are about to send is not valid on the wire, or undefined when it is. */
export const checkFrame = (frame: Frame): string | undefined => {
  if (frame._tag === "Beat") return frame.version >= 0 && frame.version <= 65535 ? undefined : "version must be a u16"
  const nameLen = utf8Length(frame.sender.name)
  if (nameLen < 1 || nameLen > MAX_NAME_BYTES) return `name must be 1..${MAX_NAME_BYTES} bytes`
  if (frame._tag === "Query" || frame._tag === "Reply") {
    if (!Number.isInteger(frame.id) || frame.id < 0 || frame.id > 0xffffffff) return "query id must be a u32"
  }
  if (frame._tag === "Messages") {
    const opLen = utf8Length(frame.op)
    if (opLen < 1 || opLen > MAX_OP_BYTES) return `op must be 1..${MAX_OP_BYTES} bytes`
    if (!Number.isInteger(frame.channel) || frame.channel < 0 || frame.channel > 65535) return "channel must be 0..65535"
    if (frame.items.length < 1 || frame.items.length > MAX_BATCH_ITEMS) return `a batch holds 1..${MAX_BATCH_ITEMS} messages`
  } else if (frame._tag === "Message" || frame._tag === "Query") {
    const opLen = utf8Length(frame.op)
    if (opLen < 1 || opLen > MAX_OP_BYTES) return `op must be 1..${MAX_OP_BYTES} bytes`
    if (!Number.isInteger(frame.channel) || frame.channel < 0 || frame.channel > 65535) return "channel must be 0..65535"
    if (frame.targets.length > MAX_TARGETS) return `at most ${MAX_TARGETS} targets`
  } else if (frame._tag === "Repair") {
    if (frame.protocols.length > MAX_PROTOCOLS) return `at most ${MAX_PROTOCOLS} protocols`
    if (frame.protocols.some((p) => !PROTOCOL_ID.has(p))) return "repair names an unknown protocol"
  } else if (frame._tag === "Peers") {
    if (frame.endpoints.length > MAX_PEERS) return `at most ${MAX_PEERS} endpoints`
    for (const e of frame.endpoints) {
      if (!net.isIPv4(e.address)) return "endpoints must be IPv4 addresses"
      if (!Number.isInteger(e.port) || e.port < 1 || e.port > 65535) return "endpoint ports must be 1..65535"
    }
  } else if (frame._tag === "Ping") {
    const [hostId, name] = idParts(frame.target)
    const n = utf8Length(name)
    if (!HOST_ID.test(hostId) || n < 1 || n > MAX_NAME_BYTES) return "ping target must be a service id"
  } else if (frame._tag !== "Leave" && frame._tag !== "Reply") {
    if (frame.protocols.length > MAX_PROTOCOLS) return `at most ${MAX_PROTOCOLS} protocols`
    if (frame.tags.length > MAX_TAGS) return `at most ${MAX_TAGS} tags`
    for (const t of frame.tags) {
      const n = utf8Length(t)
      if (n < 1 || n > MAX_TAG_BYTES) return `tags must be 1..${MAX_TAG_BYTES} bytes`
    }
  }
  return undefined
}

class Malformed {
  readonly reason: DecodeFailure
  constructor(reason: DecodeFailure) {
    this.reason = reason
  }
}

/**
 * The last sender seen on one connection or socket. Most frames on a link come
 * from one sender, so comparing header bytes saves decoding them again.
 */
export interface SenderCache {
  head?: Buffer
  sender?: Sender
}

/**
 * Decodes one frame, or says why it is not one. Never throws: every byte
 * sequence is either a frame or a `DecodeFailure`.
 */
export const decodeFrame = (bytes: Uint8Array, cache?: SenderCache): Frame | DecodeFailure => {
  try {
    return decodeOrThrow(bytes, cache)
  } catch (e) {
    if (e instanceof Malformed) return e.reason
    // A fatal TextDecoder rejects invalid UTF-8 by throwing a TypeError.
    return "invalid-field"
  }
}

/** Messages, queries and replies: traffic, as opposed to the control frames (beacons, leave, ping, repair, beat). */
export const isTraffic = (frame: Frame): frame is MessageFrame | MessagesFrame | QueryFrame | ReplyFrame =>
  frame._tag === "Message" || frame._tag === "Messages" || frame._tag === "Query" || frame._tag === "Reply"

export const isDecodeFailure = (r: Frame | DecodeFailure): r is DecodeFailure => typeof r === "string"

const decodeOrThrow = (bytes: Uint8Array, cache: SenderCache | undefined): Frame => {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const end = buf.length
  if (end < 4) throw new Malformed("truncated")
  if (buf[0] !== MAGIC) throw new Malformed("bad-magic")
  if (buf[1] !== VERSION) throw new Malformed("unknown-version")
  const tag = TAG[buf[2]!]
  if (tag === undefined) throw new Malformed("unknown-kind")
  if (tag === "Beat") {
    if (end < BEAT_SIZE) throw new Malformed("truncated")
    if (end > BEAT_SIZE) throw new Malformed("trailing-bytes")
    return {
      _tag: "Beat",
      sender: { hostId: buf.toString("hex", 4, 10), instance: buf.toString("hex", 10, 18), name: "" },
      version: buf.readUInt16BE(18)
    }
  }
  if (end < HEADER_SIZE) throw new Malformed("truncated")
  const headEnd = HEADER_SIZE + buf[18]!
  let sender: Sender
  const cached = cache?.head
  if (cached !== undefined && cached.length === headEnd && end >= headEnd && sameBytes(buf, cached, 4, headEnd)) {
    sender = cache!.sender!
  } else {
    const hostId = buf.toString("hex", 4, 10)
    const instance = buf.toString("hex", 10, 18)
    const name = readString(buf, 18, MAX_NAME_BYTES)
    sender = { hostId, instance, name }
    if (cache !== undefined) {
      cache.head = Buffer.from(buf.subarray(0, headEnd))
      cache.sender = sender
    }
  }
  let at = headEnd
  switch (tag) {
    case "Leave":
      if (at !== end) throw new Malformed("trailing-bytes")
      return { _tag: "Leave", sender }
    case "Repair": {
      need(buf, at, 1)
      const count = buf[at++]!
      if (count > MAX_PROTOCOLS) throw new Malformed("invalid-field")
      need(buf, at, count)
      if (at + count !== end) throw new Malformed("trailing-bytes")
      const protocols: Array<string> = []
      for (let i = 0; i < count; i++) {
        const p = PROTOCOL_BY_ID[buf[at + i]!]
        if (p !== undefined) protocols.push(p)
      }
      return { _tag: "Repair", sender, protocols }
    }
    case "Peers": {
      need(buf, at, 1)
      const count = buf[at++]!
      if (count > MAX_PEERS) throw new Malformed("invalid-field")
      need(buf, at, 6 * count)
      if (at + 6 * count !== end) throw new Malformed("trailing-bytes")
      const endpoints: Array<{ address: string; port: number }> = []
      for (let i = 0; i < count; i++, at += 6) {
        const port = buf.readUInt16BE(at + 4)
        if (port === 0) throw new Malformed("invalid-field")
        endpoints.push({ address: `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`, port })
      }
      return { _tag: "Peers", sender, endpoints }
    }
    case "Ping": {
      need(buf, at, 6)
      const target = `${buf.toString("hex", at, at + 6)}@${readString(buf, at + 6, MAX_NAME_BYTES)}`
      if (at + 7 + buf[at + 6]! !== end) throw new Malformed("trailing-bytes")
      return { _tag: "Ping", sender, target }
    }
    case "Reply": {
      need(buf, at, 5)
      const status = buf[at + 4]!
      if (status > 1) throw new Malformed("invalid-field")
      return { _tag: "Reply", sender, id: buf.readUInt32BE(at), ok: status === 0, data: buf.subarray(at + 5, end) }
    }
    case "Messages": {
      const op = readString(buf, at, MAX_OP_BYTES)
      at += 1 + buf[at]!
      need(buf, at, 6)
      const channel = buf.readUInt16BE(at)
      const count = buf.readUInt32BE(at + 2)
      at += 6
      if (count < 1 || count > MAX_BATCH_ITEMS) throw new Malformed("invalid-field")
      need(buf, at, 4 * count) // before allocating for them
      const items: Array<Uint8Array> = new Array(count)
      for (let i = 0; i < count; i++) {
        need(buf, at, 4)
        const len = buf.readUInt32BE(at)
        need(buf, at + 4, len)
        items[i] = buf.subarray(at + 4, at + 4 + len)
        at += 4 + len
      }
      if (at !== end) throw new Malformed("trailing-bytes")
      return { _tag: "Messages", sender, op, channel, items }
    }
    case "Query":
    case "Message": {
      let id = 0
      if (tag === "Query") {
        need(buf, at, 4)
        id = buf.readUInt32BE(at)
        at += 4
      }
      const op = readString(buf, at, MAX_OP_BYTES)
      at += 1 + buf[at]!
      need(buf, at, 3)
      const channel = buf.readUInt16BE(at)
      at += 2
      const count = buf[at++]!
      if (count > MAX_TARGETS) throw new Malformed("invalid-field")
      const targets: Array<string> = []
      for (let i = 0; i < count; i++) {
        need(buf, at, 6)
        const targetHost = buf.toString("hex", at, at + 6)
        at += 6
        targets.push(`${targetHost}@${readString(buf, at, MAX_NAME_BYTES)}`)
        at += 1 + buf[at]!
      }
      const data = buf.subarray(at, end)
      return tag === "Query"
        ? { _tag: "Query", sender, id, op, channel, targets, data }
        : { _tag: "Message", sender, op, channel, targets, data }
    }
    default: {
      need(buf, at, 1)
      const count = buf[at++]!
      if (count > MAX_PROTOCOLS) throw new Malformed("invalid-field")
      need(buf, at, 3 * count)
      const protocols: Array<Advertised> = []
      for (let i = 0; i < count; i++) {
        const protocol = PROTOCOL_BY_ID[buf[at]!]
        const port = buf.readUInt16BE(at + 1)
        at += 3
        // Unknown protocol ids come from newer members: skip them, keep the rest.
        if (protocol !== undefined) protocols.push({ protocol, port })
      }
      need(buf, at, 1)
      const tagCount = buf[at++]!
      if (tagCount > MAX_TAGS) throw new Malformed("invalid-field")
      const tags: Array<string> = []
      for (let i = 0; i < tagCount; i++) {
        tags.push(readString(buf, at, MAX_TAG_BYTES))
        at += 1 + buf[at]!
      }
      need(buf, at, 2)
      const version = buf.readUInt16BE(at)
      at += 2
      if (at !== end) throw new Malformed("trailing-bytes")
      return { _tag: tag, sender, protocols, tags, version }
    }
  }
}

const need = (buf: Buffer, at: number, n: number) => {
  if (at + n > buf.length) throw new Malformed("truncated")
}

/** A u8 length-prefixed UTF-8 string of 1..max bytes. */
const readString = (buf: Buffer, at: number, max: number): string => {
  need(buf, at, 1)
  const len = buf[at]!
  if (len === 0 || len > max) throw new Malformed("invalid-field")
  need(buf, at + 1, len)
  return readUtf8(buf, at + 1, at + 1 + len)
}
