/**
 * A channel whose data only key holders can read: a send hook seals each
 * message with AES-256-GCM, a receive hook opens it (and rejects what does not
 * open). Members without the key, or not on the channel, never see plaintext.
 *
 *   yield* sealChannel(7, key)
 *   yield* Cluster.broadcast("S", "secret", { channel: 7 })
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto"
import { Effect } from "effect"
import { Cluster, HookPoint, HookRejected } from "cluster-comm"

const IV = 12
const TAG = 16

export const seal = (key: Uint8Array, plain: Uint8Array): Uint8Array => {
  const iv = randomBytes(IV)
  const cipher = createCipheriv("aes-256-gcm", key, iv)
  const body = Buffer.concat([cipher.update(plain), cipher.final()])
  return Buffer.concat([iv, cipher.getAuthTag(), body])
}

export const open = (key: Uint8Array, sealed: Uint8Array): Uint8Array => {
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength)
  const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, IV))
  decipher.setAuthTag(bytes.subarray(IV, IV + TAG))
  return Buffer.concat([decipher.update(bytes.subarray(IV + TAG)), decipher.final()])
}

/** Joins `channel` and seals everything sent on it, opening what arrives. */
export const sealChannel = (channel: number, key: Uint8Array) =>
  Effect.gen(function*() {
    yield* Cluster.channels.join(channel)
    yield* Cluster.hook(HookPoint.channel(channel, "send"), (out) =>
      Effect.sync(() => ({ ...out, data: seal(key, out.data) })))
    yield* Cluster.hook(HookPoint.channel(channel, "receive"), (message) =>
      Effect.try({
        try: () => message.with({ data: open(key, message.data) }),
        catch: (cause) => new HookRejected({ point: `channel ${channel} receive`, reason: "does not open with our key", cause })
      }))
  })
