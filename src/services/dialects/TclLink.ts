/**
 * The Tcl dialect's tcp: a listener of its own that Tcl members connect to,
 * and persistent connections to Tcl members. Both carry bpackets back to back
 * (no length prefix: a packet says its own length), in both directions.
 *
 * Contract: every packet read goes to `onPacket`, with the peer's address;
 * a stream that is not packets is dropped (counted by reason) and closed.
 * `write` resolves once the bytes are handed to the socket, or fails with a
 * `ProtocolFailure` (refused, reset, no connection within 2 s).
 */
import { net } from "../../internal/builtins.ts"
import type * as Net from "node:net"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { bpacketLength } from "../../schema/Bpacket.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import type { Stats } from "../Stats.ts"

export interface TclLink {
  /** The port Tcl members connect to (advertised as `t {port N}`). */
  readonly port: number
  readonly write: (to: { readonly address: string; readonly port: number; readonly name: string }, bytes: Uint8Array) => Effect.Effect<void, ProtocolFailure>
}

export const makeTclLink = (options: {
  readonly config: ClusterConfig
  readonly stats: Stats["Service"]
  /** Where the listener binds (loopback for `remote: 0`). */
  readonly host: string
  readonly onPacket: (bytes: Uint8Array, address: string) => void
}): Effect.Effect<TclLink, JoinError, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, stats, onPacket } = options

    /** Reads packets back to back from a connection, for as long as they are packets. */
    const readPackets = (socket: Net.Socket, address: string) => {
      let buffered: Buffer = Buffer.alloc(0)
      socket.on("data", (chunk: Buffer) => {
        buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
        while (buffered.length > 0) {
          const length = bpacketLength(buffered, config.maxFrame)
          if (length === undefined) return
          if (typeof length === "string") {
            stats.drop(length)
            socket.destroy()
            return
          }
          onPacket(buffered.subarray(0, length), address)
          buffered = buffered.subarray(length)
        }
      })
      socket.on("error", () => {})
    }

    const accepted = new Set<Net.Socket>()
    const server = net.createServer((socket) => {
      if (accepted.size >= config.maxConnections) {
        socket.destroy()
        return
      }
      accepted.add(socket)
      socket.once("close", () => accepted.delete(socket))
      stats.connection("accepted")
      readPackets(socket, (socket.remoteAddress ?? "").replace(/^::ffff:/, ""))
    })
    const port = yield* Effect.acquireRelease(
      Effect.callback<number, JoinError>((resume) => {
        server.once("error", (e) =>
          resume(Effect.fail(new JoinError({ reason: "AddressInUse", field: "tcl", message: `cannot open the Tcl dialect's tcp listener: ${e.message}`, cause: e }))))
        server.listen(0, options.host, () => resume(Effect.succeed((server.address() as Net.AddressInfo).port)))
      }),
      () =>
        Effect.callback<void>((resume) => {
          for (const s of accepted) s.destroy()
          server.close(() => resume(Effect.void))
        })
    )

    const connections = new Map<string, Promise<Net.Socket>>()
    yield* Effect.addFinalizer(() =>
      Effect.promise(() =>
        Promise.allSettled([...connections.values()]).then((all) => {
          for (const r of all) if (r.status === "fulfilled") r.value.destroy()
        })
      )
    )
    const connect = (address: string, port: number): Promise<Net.Socket> => {
      const key = `${address}:${port}`
      let socket = connections.get(key)
      if (socket === undefined) {
        socket = new Promise<Net.Socket>((resolve, reject) => {
          const s = net.connect({ host: address, port, timeout: 2000 })
          s.once("connect", () => {
            s.setTimeout(0)
            stats.connection("opened")
            resolve(s)
          })
          s.once("timeout", () => s.destroy(new Error("connect timed out")))
          s.once("error", reject)
          s.once("close", () => connections.delete(key))
          // The package answers over whichever connection came first: ours too.
          readPackets(s, address)
        })
        connections.set(key, socket)
        socket.catch(() => connections.delete(key))
      }
      return socket
    }

    return {
      port,
      write: (to, bytes) =>
        Effect.tryPromise({
          try: () =>
            connect(to.address, to.port).then((s) =>
              new Promise<void>((resolve, reject) => s.write(bytes, (e) => (e ? reject(e) : resolve())))
            ),
          catch: (e) => new ProtocolFailure({ protocol: "tcp", message: `to Tcl member ${to.name}: ${(e as Error).message}`, cause: e })
        }).pipe(Effect.tap(() => Effect.sync(() => stats.wrote(bytes.length))))
    } satisfies TclLink
  })
