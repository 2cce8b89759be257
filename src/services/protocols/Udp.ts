/**
 * The udp protocol: the shared multicast socket (beacons and broadcasts) and
 * this member's own unicast socket (probe answers and direct datagrams).
 *
 * The group socket binds the group address itself, with reuseAddr and
 * reusePort, so every member on the host shares the port and only datagrams
 * sent to this group reach it (bound to 0.0.0.0, Linux would also hand it
 * other groups' traffic on the same port). With `remote: 0` the group is joined
 * on loopback and sent through it with TTL 0, so nothing leaves the host, not
 * even an IGMP report.
 */
import dgram from "node:dgram"
import { Effect } from "effect"
import { interfaceAddress } from "../../internal/host.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { FrameTooLarge, JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import type { Frame, SenderCache } from "../../schema/Frame.ts"
import { Stats } from "../Stats.ts"
import type { Endpoint, Inlet, Protocol } from "../Transport.ts"

/** The largest IPv4 udp payload. */
export const MAX_DATAGRAM = 65507

export interface UdpProtocol extends Protocol {
  readonly multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
}

const bind = (socket: dgram.Socket, port: number, address: string) =>
  Effect.callback<void, JoinError>((resume) => {
    const onError = (e: NodeJS.ErrnoException) =>
      resume(Effect.fail(new JoinError({
        reason: e.code === "EADDRINUSE" ? "AddressInUse" : "NoMulticast",
        message: `cannot bind udp ${address}:${port}: ${e.message}`,
        cause: e
      })))
    socket.once("error", onError)
    socket.bind(port, address, () => {
      socket.off("error", onError)
      resume(Effect.void)
    })
  })

const open = (options: dgram.SocketOptions) =>
  Effect.acquireRelease(
    Effect.sync(() => dgram.createSocket(options)),
    (socket) =>
      Effect.callback<void>((resume) => {
        try {
          socket.close(() => resume(Effect.void))
        } catch {
          resume(Effect.void) // never bound, or already closed
        }
      })
  )

const trying = <A>(what: string, reason: JoinError["reason"], f: () => A) =>
  Effect.try({ try: f, catch: (e) => new JoinError({ reason, message: `${what}: ${String(e)}`, cause: e }) })

export const UdpProtocol = {
  make: (config: ClusterConfig, inlet: Inlet) =>
    Effect.gen(function*() {
      const stats = yield* Stats
      const local = config.remote === 0
      const iface = local ? "127.0.0.1" : interfaceAddress(config.interface)
      if (iface === undefined) {
        return yield* new JoinError({
          reason: "NoInterface",
          field: "interface",
          message: config.interface === undefined
            ? "no non-loopback IPv4 interface for remote multicast"
            : `no IPv4 interface named or addressed ${config.interface}`
        })
      }

      const group = yield* open({ type: "udp4", reuseAddr: true, reusePort: true })
      yield* bind(group, config.port, config.address)
      yield* trying(`cannot join ${config.address} on ${iface}`, "NoMulticast", () =>
        group.addMembership(config.address, iface))

      const direct = yield* open({ type: "udp4" })
      yield* bind(direct, 0, local ? "127.0.0.1" : "0.0.0.0")
      yield* trying(`cannot send multicast through ${iface}`, "NoMulticast", () => {
        direct.setMulticastInterface(iface)
        direct.setMulticastTTL(config.remote)
        direct.setMulticastLoopback(true)
      })

      for (const socket of [group, direct]) {
        // A bigger receive buffer rides out bursts (many probe answers at once);
        // the kernel caps it at net.core.rmem_max, which is fine.
        try {
          socket.setRecvBufferSize(4 * 1024 * 1024)
        } catch {
          // keep the default
        }
        const cache: SenderCache = {}
        socket.on("message", (bytes, from) => inlet.receive(bytes, "udp", from.address, cache, from.port))
        // Errors after bind (e.g. ICMP unreachable reported on send) must not crash the member.
        socket.on("error", () => {})
      }

      const transmit = (frame: Frame, port: number, address: string) =>
        Effect.suspend((): Effect.Effect<void, FrameTooLarge | ProtocolFailure> => {
          const bytes = inlet.encode(frame)
          if (bytes.length > MAX_DATAGRAM) {
            return Effect.fail(new FrameTooLarge({ protocol: "udp", size: bytes.length, limit: MAX_DATAGRAM }))
          }
          stats.wrote(bytes.length)
          return Effect.callback<void, ProtocolFailure>((resume) => {
            direct.send(bytes, port, address, (e) =>
              resume(e ? Effect.fail(new ProtocolFailure({ protocol: "udp", message: e.message, cause: e })) : Effect.void))
          })
        })

      return {
        name: "udp",
        port: direct.address().port,
        maxFrame: MAX_DATAGRAM,
        send: (to: Endpoint, frame: Frame) => transmit(frame, to.port, to.address),
        multicast: (frame: Frame) => transmit(frame, config.port, config.address)
      } satisfies UdpProtocol
    })
}
