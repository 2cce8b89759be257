/**
 * bpacket v2: the Tcl package's wire format ("tcl cluster" 1.1.8, bpacket
 * 1.3.2), spoken beside our own by a member with `tcl: true`.
 *
 * A packet is `C0 8D`, a varint LEN, LEN bytes of fields, then `00 00`.
 * Varints are unsigned LEB128. A field is a varint id and its value:
 *
 * | id | name | type | | id | name | type |
 * | --- | --- | --- | --- | --- | --- | --- |
 * | 1 | type | varint | | 9 | op | string |
 * | 2 | channel | varint | | 10 | data | string |
 * | 3 | hid | string | | 11 | raw | raw |
 * | 4 | sid | string | | 12 | tags | list |
 * | 5 | known | varint | | 13 | keepalive | boolean |
 * | 6 | timestamp | varint | | 14 | filter | list |
 * | 7 | protocols | list | | 15 | error | string |
 * | 8 | ruid | string | | | | |
 *
 * string and raw: varint length, then the bytes; list: varint count, then
 * strings; boolean: one byte. Packet types (field 1): 0 disconnect, 1
 * heartbeat, 2 discovery, 3 ping, 4 query, 5 response, 6 event, 7 flush
 * props, 8 failed.
 *
 * The decoder is plain synchronous code that never throws: what is not a
 * packet is a `BpacketFailure` naming why, for the caller to count. It reads
 * proper LEB128 (the package's own reader strips a `C0 8D` anywhere, and so
 * misreads a length of 18112); strings keep their bytes (`data`) or are read
 * as UTF-8, and as Latin-1 where they are not UTF-8 (the package writes what
 * Tcl holds, which need not be UTF-8).
 */

export const BPACKET_MAGIC_0 = 0xc0
export const BPACKET_MAGIC_1 = 0x8d

/** Packet types (field 1). */
export const BpacketType = {
  disconnect: 0,
  heartbeat: 1,
  discovery: 2,
  ping: 3,
  query: 4,
  response: 5,
  event: 6,
  flushProps: 7,
  failed: 8
} as const

export type BpacketFailure = "bpacket-truncated" | "bpacket-unknown-field" | "bpacket-oversize" | "bpacket-invalid"

/** A decoded packet: each field present by name (`data` and `raw` as bytes). */
export interface Bpacket {
  readonly type?: number
  readonly channel?: number
  readonly hid?: string
  readonly sid?: string
  readonly known?: number
  readonly timestamp?: number
  readonly protocols?: ReadonlyArray<string>
  readonly ruid?: string
  readonly op?: string
  readonly data?: Uint8Array
  readonly raw?: Uint8Array
  readonly tags?: ReadonlyArray<string>
  readonly keepalive?: boolean
  readonly filter?: ReadonlyArray<string>
  readonly error?: string
}

export type BpacketField = keyof Bpacket

type Kind = "varint" | "string" | "bytes" | "list" | "boolean"

/** The package's template (cluster/utils/packet.tcl), by id; `data` and `raw` are kept as bytes. */
const FIELDS: ReadonlyArray<readonly [number, BpacketField, Kind]> = [
  [1, "type", "varint"],
  [2, "channel", "varint"],
  [3, "hid", "string"],
  [4, "sid", "string"],
  [5, "known", "varint"],
  [6, "timestamp", "varint"],
  [7, "protocols", "list"],
  [8, "ruid", "string"],
  [9, "op", "string"],
  [10, "data", "bytes"],
  [11, "raw", "bytes"],
  [12, "tags", "list"],
  [13, "keepalive", "boolean"],
  [14, "filter", "list"],
  [15, "error", "string"]
]
const BY_ID = new Map(FIELDS.map(([id, name, kind]) => [id, { name, kind }]))
const BY_NAME = new Map(FIELDS.map(([id, name, kind]) => [name, { id, kind }]))

/** The most a varint may say (a u32): anything longer is not the package's. */
const MAX_VARINT = 0xffffffff

const utf8 = new TextDecoder("utf-8", { fatal: true })
const latin1 = new TextDecoder("latin1")
const encoder = new TextEncoder()

const text = (bytes: Uint8Array): string => {
  try {
    return utf8.decode(bytes)
  } catch {
    return latin1.decode(bytes)
  }
}

class Failed {
  readonly reason: BpacketFailure
  constructor(reason: BpacketFailure) {
    this.reason = reason
  }
}

/** A reader over one packet's field bytes; every read checks what is left. */
class Reader {
  readonly buf: Uint8Array
  readonly end: number
  at: number
  constructor(buf: Uint8Array, start: number, end: number) {
    this.buf = buf
    this.at = start
    this.end = end
  }
  varint(): number {
    let value = 0
    let scale = 1
    for (let i = 0; i < 5; i++) {
      if (this.at >= this.end) throw new Failed("bpacket-truncated")
      const b = this.buf[this.at++]!
      value += (b & 0x7f) * scale
      if ((b & 0x80) === 0) {
        if (value > MAX_VARINT) throw new Failed("bpacket-invalid")
        return value
      }
      scale *= 128
    }
    throw new Failed("bpacket-invalid")
  }
  bytes(): Uint8Array {
    const n = this.varint()
    if (n > this.end - this.at) throw new Failed("bpacket-truncated")
    const out = this.buf.subarray(this.at, this.at + n)
    this.at += n
    return out
  }
}

/** Reads a varint at `at` of `buf`: its value and where it ends, or a failure. */
const readVarint = (buf: Uint8Array, at: number): { value: number; next: number } | BpacketFailure => {
  try {
    const r = new Reader(buf, at, buf.length)
    const value = r.varint()
    return { value, next: r.at }
  } catch (e) {
    if (e instanceof Failed) return e.reason
    throw e
  }
}

/** Where a packet's fields start and where it ends; undefined while more bytes are needed. */
const bounds = (buf: Uint8Array, limit: number): { readonly body: number; readonly total: number } | undefined | BpacketFailure => {
  if (buf.length >= 1 && buf[0] !== BPACKET_MAGIC_0) return "bpacket-invalid"
  if (buf.length >= 2 && buf[1] !== BPACKET_MAGIC_1) return "bpacket-invalid"
  if (buf.length < 3) return undefined
  const len = readVarint(buf, 2)
  if (len === "bpacket-truncated") return buf.length >= 7 ? "bpacket-invalid" : undefined
  if (typeof len === "string") return len
  if (len.value > limit) return "bpacket-oversize"
  const total = len.next + len.value + 2
  return buf.length < total ? undefined : { body: len.next, total }
}

/**
 * Where the packet at the start of `buf` ends (a stream holds packets back to
 * back): its length in bytes, `undefined` while more bytes are needed, or why
 * it can never be a packet. `limit` caps LEN.
 */
export const bpacketLength = (buf: Uint8Array, limit: number): number | undefined | BpacketFailure => {
  const b = bounds(buf, limit)
  return b === undefined || typeof b === "string" ? b : b.total
}

/** Decodes one whole packet (a datagram, or one cut from a stream by `bpacketLength`). */
export const decodeBpacket = (buf: Uint8Array, limit = 65507): Bpacket | BpacketFailure => {
  const b = bounds(buf, limit)
  if (b === undefined) return "bpacket-truncated"
  if (typeof b === "string") return b
  const { body, total } = b
  if (total !== buf.length) return "bpacket-invalid"
  if (buf[total - 1] !== 0 || buf[total - 2] !== 0) return "bpacket-invalid"
  const r = new Reader(buf, body, total - 2)
  const out: Record<string, unknown> = {}
  try {
    while (r.at < r.end) {
      const field = BY_ID.get(r.varint())
      // The package drops a packet with a field it does not know: so do we.
      if (field === undefined) return "bpacket-unknown-field"
      switch (field.kind) {
        case "varint":
          out[field.name] = r.varint()
          break
        case "string":
          out[field.name] = text(r.bytes())
          break
        case "bytes":
          out[field.name] = r.bytes()
          break
        case "boolean":
          if (r.at >= r.end) return "bpacket-truncated"
          out[field.name] = r.buf[r.at++] !== 0
          break
        case "list": {
          const count = r.varint()
          // Each item takes a byte at least: a count past that is a lie, not a reason to allocate.
          if (count > r.end - r.at) return "bpacket-invalid"
          const items: Array<string> = []
          for (let i = 0; i < count; i++) items.push(text(r.bytes()))
          out[field.name] = items
          break
        }
      }
    }
  } catch (e) {
    if (e instanceof Failed) return e.reason
    throw e
  }
  return out as Bpacket
}

/** A field's value as `encodeBpacket` takes it: strings for `data` and `raw` too. */
export type BpacketValue = number | boolean | string | Uint8Array | ReadonlyArray<string>

const pushVarint = (out: Array<number>, n: number) => {
  let v = n
  while (v >= 0x80) {
    out.push((v % 128) | 0x80)
    v = Math.floor(v / 128)
  }
  out.push(v)
}
const pushBytes = (out: Array<number>, bytes: Uint8Array) => {
  pushVarint(out, bytes.length)
  for (const b of bytes) out.push(b)
}
const asBytes = (v: string | Uint8Array) => (typeof v === "string" ? encoder.encode(v) : v)

/** Encodes fields in the order given (the package writes sid, hid, type, ... ; a filter may come first). */
export const encodeBpacket = (fields: ReadonlyArray<readonly [BpacketField, BpacketValue]>): Uint8Array => {
  const body: Array<number> = []
  for (const [name, value] of fields) {
    const field = BY_NAME.get(name)!
    pushVarint(body, field.id)
    switch (field.kind) {
      case "varint":
        pushVarint(body, value as number)
        break
      case "boolean":
        body.push(value ? 1 : 0)
        break
      case "list": {
        const items = value as ReadonlyArray<string>
        pushVarint(body, items.length)
        for (const item of items) pushBytes(body, encoder.encode(item))
        break
      }
      default:
        pushBytes(body, asBytes(value as string | Uint8Array))
    }
  }
  const head: Array<number> = [BPACKET_MAGIC_0, BPACKET_MAGIC_1]
  pushVarint(head, body.length)
  const out = new Uint8Array(head.length + body.length + 2)
  out.set(head, 0)
  out.set(body, head.length)
  return out
}

/** Whether bytes start like a bpacket (the first two bytes: `C0 8D`). */
export const isBpacket = (bytes: Uint8Array): boolean =>
  bytes.length >= 2 && bytes[0] === BPACKET_MAGIC_0 && bytes[1] === BPACKET_MAGIC_1
