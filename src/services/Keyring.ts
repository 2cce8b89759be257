/**
 * Keyring: authenticated encryption of every frame on every protocol.
 *
 * With a key, a frame travels sealed with AES-256-GCM:
 *
 * | offset | size | field |
 * | --- | --- | --- |
 * | 0 | 1 | magic `0xCE` (sealed) |
 * | 1 | 1 | version (1) |
 * | 2 | 1 | key id |
 * | 3 | 8 | sequence number: 1, 2, 3... per sending process |
 * | 11 | 4 | the sender's clock, in seconds |
 * | 15 | 12 | nonce (random) |
 * | 27 | n | the frame, encrypted |
 * | 27 + n | 16 | GCM tag (covers bytes 0..26 too) |
 *
 * Several keys can be installed; one is primary (used to seal), all open.
 * Rotation without downtime, as Serf does it: install the new key everywhere,
 * make it primary everywhere, remove the old one.
 *
 * Replays: a receiver keeps, per sender instance, the highest sequence number
 * and a window of the last 4,096, and refuses a number seen before or older
 * than the window. A frame whose clock is more than `maxSkew` (5 minutes by
 * default) from ours is refused too, so a captured frame cannot be replayed
 * later even to a member that never heard its sender (clocks must agree
 * within that much).
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { nodeCrypto } from "../internal/builtins.ts"

export const SEALED_MAGIC = 0xce
const VERSION = 1
const HEAD = 27
const NONCE = 15
const TAG = 16
/** What sealing adds to a frame. */
export const SEAL_OVERHEAD = HEAD + TAG
const WINDOW = 4096
const MAX_SENDERS = 4096

/** A key as configured: an id (0..255) and a secret (any string; a key is derived from it). */
export interface KeySpec {
  readonly id: number
  readonly secret: string
}

export class KeyringError extends Data.TaggedError("KeyringError")<{ readonly message: string }> {}

/** Why a sealed frame was refused. */
export type OpenFailure = "unsealed" | "unknown-key" | "forged" | "replayed" | "stale"

/** The key of a secret: HKDF-SHA256, so a passphrase makes a proper 256-bit key. */
export const deriveKey = (secret: string): Buffer =>
  Buffer.from(nodeCrypto().hkdfSync("sha256", secret, "cluster-comm/v1", "frame key", 32))

export class Keyring extends Context.Service<Keyring, {
  /** Whether frames are sealed at all (a keyring with at least one key). */
  readonly enabled: () => boolean
  /** Seals an encoded frame, leaving `headroom` free bytes in front. Identity when disabled. */
  readonly seal: (plain: Buffer, headroom: number) => Buffer
  /**
   * Opens a sealed frame: the frame's bytes and its counter, or why not. When
   * disabled, unsealed frames pass as they are and sealed ones are `unknown-key`.
   */
  readonly open: (bytes: Uint8Array) => { readonly frame: Uint8Array; readonly counter: number } | OpenFailure
  /** The replay check, once the sender's instance is known: true the first time a counter is seen. */
  readonly fresh: (instance: string, counter: number) => boolean
  /** Adds a key (not yet used to seal). */
  readonly install: (key: KeySpec) => Effect.Effect<void, KeyringError>
  /** Makes an installed key the one that seals. */
  readonly use: (id: number) => Effect.Effect<void, KeyringError>
  /** Removes a key; the primary cannot be removed. */
  readonly remove: (id: number) => Effect.Effect<void, KeyringError>
  /** Installed key ids and the primary one. */
  readonly list: Effect.Effect<{ readonly ids: ReadonlyArray<number>; readonly primary: number | undefined }>
}>()("cluster-comm/Keyring") {
  static readonly layer = (options: {
    readonly keys: ReadonlyArray<KeySpec>
    readonly primary?: number | undefined
    readonly maxSkewMillis?: number
  }) =>
    Layer.sync(Keyring, () => {
      const keys = new Map<number, Buffer>(options.keys.map((k) => [k.id, deriveKey(k.secret)]))
      let primary = options.primary ?? options.keys[0]?.id
      const maxSkew = (options.maxSkewMillis ?? 5 * 60_000) / 1000
      let sequence = 0
      const windows = new Map<string, { max: number; slots: Float64Array }>()

      const seal = (plain: Buffer, headroom: number): Buffer => {
        if (primary === undefined) {
          if (headroom === 0) return plain
          const out = Buffer.allocUnsafe(headroom + plain.length)
          plain.copy(out, headroom)
          return out
        }
        const key = keys.get(primary)!
        sequence++
        const out = Buffer.allocUnsafe(headroom + HEAD + plain.length + TAG)
        const head = out.subarray(headroom, headroom + HEAD)
        head[0] = SEALED_MAGIC
        head[1] = VERSION
        head[2] = primary
        head.writeUInt32BE(Math.floor(sequence / 2 ** 32), 3)
        head.writeUInt32BE(sequence % 2 ** 32, 7)
        head.writeUInt32BE(Math.floor(Date.now() / 1000) >>> 0, 11)
        const { createCipheriv, randomBytes } = nodeCrypto()
        randomBytes(12).copy(head, NONCE)
        const cipher = createCipheriv("aes-256-gcm", key, head.subarray(NONCE, HEAD))
        cipher.setAAD(head)
        const body = cipher.update(plain)
        body.copy(out, headroom + HEAD)
        cipher.final()
        cipher.getAuthTag().copy(out, headroom + HEAD + body.length)
        return out
      }

      const open = (raw: Uint8Array) => {
        const bytes = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)
        const sealed = bytes.length > 0 && bytes[0] === SEALED_MAGIC
        if (primary === undefined && keys.size === 0) {
          return sealed ? "unknown-key" as const : { frame: bytes, counter: 0 }
        }
        if (!sealed) return "unsealed" as const
        if (bytes.length < HEAD + TAG || bytes[1] !== VERSION) return "forged" as const
        const key = keys.get(bytes[2]!)
        if (key === undefined) return "unknown-key" as const
        const counter = bytes.readUInt32BE(3) * 2 ** 32 + bytes.readUInt32BE(7)
        if (Math.abs(bytes.readUInt32BE(11) - Date.now() / 1000) > maxSkew) return "stale" as const
        try {
          const decipher = nodeCrypto().createDecipheriv("aes-256-gcm", key, bytes.subarray(NONCE, HEAD))
          decipher.setAAD(bytes.subarray(0, HEAD))
          decipher.setAuthTag(bytes.subarray(bytes.length - TAG))
          const frame = Buffer.concat([decipher.update(bytes.subarray(HEAD, bytes.length - TAG)), decipher.final()])
          return { frame, counter }
        } catch {
          return "forged" as const
        }
      }

      const fresh = (instance: string, counter: number): boolean => {
        if (primary === undefined && keys.size === 0) return true
        let w = windows.get(instance)
        if (w === undefined) {
          // Bounded: the oldest sender's window goes first.
          if (windows.size >= MAX_SENDERS) windows.delete(windows.keys().next().value!)
          w = { max: 0, slots: new Float64Array(WINDOW).fill(-1) }
          windows.set(instance, w)
        }
        // The last WINDOW numbers each have a slot of their own; older ones are refused.
        if (counter <= w.max - WINDOW) return false
        const slot = counter % WINDOW
        if (w.slots[slot] === counter) return false
        w.slots[slot] = counter
        if (counter > w.max) w.max = counter
        return true
      }

      return Keyring.of({
        enabled: () => primary !== undefined,
        seal,
        open,
        fresh,
        install: (k) =>
          Effect.suspend(() => {
            if (!Number.isInteger(k.id) || k.id < 0 || k.id > 255) {
              return Effect.fail(new KeyringError({ message: `key id ${k.id} is not 0..255` }))
            }
            if (k.secret.length === 0) return Effect.fail(new KeyringError({ message: "a key's secret cannot be empty" }))
            keys.set(k.id, deriveKey(k.secret))
            if (primary === undefined) primary = k.id
            return Effect.void
          }),
        use: (id) =>
          Effect.suspend(() => {
            if (!keys.has(id)) return Effect.fail(new KeyringError({ message: `key ${id} is not installed` }))
            primary = id
            return Effect.void
          }),
        remove: (id) =>
          Effect.suspend(() => {
            if (id === primary) return Effect.fail(new KeyringError({ message: `key ${id} is the primary: make another primary first` }))
            keys.delete(id)
            return Effect.void
          }),
        list: Effect.sync(() => ({ ids: [...keys.keys()].sort((a, b) => a - b), primary }))
      })
    })
}
