/**
 * The unix protocol: a stream protocol (see Stream.ts) over unix domain
 * sockets, for members on the same host; tried before any other protocol for
 * local peers, never for remote ones.
 *
 * Sockets live in a private directory (mode 0700, owned by this user) under
 * the system's temporary directory, one file a member: `<instance>-<id>.sock`,
 * where `id` is the number advertised in place of a port. A new instance never
 * collides with an old file; files left by crashed members are removed when a
 * member starts (nothing listens on them any more), and a member removes its own
 * file when it leaves.
 */
import { fs, net, os, path as nodePath } from "../../internal/builtins.ts"
import * as Effect from "effect/Effect"
import * as Random from "effect/Random"
import { JoinError } from "../../schema/Errors.ts"
import type { ProtocolPlugin } from "../Protocol.ts"
import { makeStreamProtocol, streamLimits } from "./Stream.ts"

const { lstatSync, mkdirSync, readdirSync, unlinkSync } = fs

/** The directory of this user's member sockets. */
export const socketDir = (): string => nodePath.join(os.tmpdir(), `cluster-comm-${process.getuid?.() ?? "user"}`)
const socketPath = (instance: string, id: number) => nodePath.join(socketDir(), `${instance}-${id}.sock`)

const privateDir = Effect.try({
  try: () => {
    const dir = socketDir()
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const st = lstatSync(dir)
    // Someone else's directory, or one others can write to, is not ours to trust.
    if (!st.isDirectory() || (process.getuid !== undefined && st.uid !== process.getuid()) || (st.mode & 0o077) !== 0) {
      throw new Error(`${dir} must be a directory of this user with mode 0700`)
    }
    return dir
  },
  catch: (cause) => new JoinError({ reason: "NoInterface", field: "protocols", message: `unix sockets unavailable: ${String(cause)}`, cause })
})

/** Removes socket files nobody listens on any more (at most 256 looked at). */
const removeStale = (dir: string) =>
  Effect.forEach(
    readdirSync(dir).filter((f) => f.endsWith(".sock")).slice(0, 256),
    (file) =>
      Effect.callback<void>((resume) => {
        const path = nodePath.join(dir, file)
        const probe = net.connect({ path })
        probe.once("connect", () => {
          probe.destroy()
          resume(Effect.void)
        })
        probe.once("error", (e: NodeJS.ErrnoException) => {
          if (e.code === "ECONNREFUSED") {
            try {
              unlinkSync(path)
            } catch {
              // gone already
            }
          }
          resume(Effect.void)
        })
      }),
    { discard: true, concurrency: 16 }
  )

export const UnixProtocol: ProtocolPlugin = {
  name: "unix",
  id: 3,
  local: true,
  make: ({ config, inlet, stats, self }) =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      yield* removeStale(dir)
      let path = ""
      return yield* makeStreamProtocol({
        name: "unix",
        maxFrame: config.maxFrame,
        inlet,
        stats,
        limits: streamLimits(config),
        listen: (server) =>
          Effect.gen(function*() {
            const id = yield* Random.nextIntBetween(1, 65536)
            path = socketPath(self.instance, id)
            yield* Effect.callback<void, JoinError>((resume) => {
              const onError = (e: NodeJS.ErrnoException) =>
                resume(Effect.fail(new JoinError({ reason: "AddressInUse", field: "protocols", message: `cannot listen on ${path}: ${e.message}`, cause: e })))
              server.once("error", onError)
              server.listen(path, () => {
                server.off("error", onError)
                resume(Effect.void)
              })
            })
            return id
          }),
        unlisten: () =>
          Effect.sync(() => {
            try {
              unlinkSync(path)
            } catch {
              // already gone
            }
          }),
        connectTo: (to) => ({ path: socketPath(to.service.instance, to.port) }),
        keyOf: (to) => `${to.service.instance}-${to.port}`,
        addressOf: () => "127.0.0.1",
        selfEndpoint: () => ({ path })
      })
    })
}
