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
import { dgram } from "../../internal/builtins.ts"
import type * as Dgram from "node:dgram"
import * as Effect from "effect/Effect"
import { interfaceAddress } from "../../internal/host.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { FrameTooLarge, JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import type { Frame, SenderCache } from "../../schema/Frame.ts"
import { Stats } from "../Stats.ts"
import type { DecodedOnce, Endpoint, Inlet, Protocol } from "../Protocol.ts"

/** The largest IPv4 udp payload. */
export const MAX_DATAGRAM = 65507

export interface UdpProtocol extends Protocol {
  readonly multicast: (frame: Frame) => Effect.Effect<void, FrameTooLarge | ProtocolFailure>
  /** Sends bytes already encoded (another dialect's packet) to the group. */
  readonly multicastBytes: (bytes: Uint8Array) => Effect.Effect<void, ProtocolFailure>
}

const bind = (socket: Dgram.Socket, port: number, address: string) =>
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

const open = (options: Dgram.SocketOptions) =>
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

type Heard = (bytes: Buffer, from: Dgram.RemoteInfo, once: DecodedOnce) => void

/** One group socket, shared by every member of this process on that group, port and interface. */
interface SharedGroup {
  readonly opened: Promise<Dgram.Socket | JoinError>
  readonly members: Set<Heard>
}
const groups = new Map<string, SharedGroup>()

/**
 * Joins the group through this process's shared socket (opened by the first
 * member, closed with the last). Members of one process on one socket: each
 * datagram is received once and handed to each of them, where a socket each
 * would have the kernel copy it to every one (at 500 members, most of the CPU).
 */
const joinGroup = (port: number, address: string, iface: string, heard: Heard) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const key = `${address}:${port}@${iface}`
      while (true) {
        const shared = groups.get(key) ?? share(key, port, address, iface)
        const socket = yield* Effect.promise(() => shared.opened)
        if (socket instanceof JoinError) return yield* socket
        // Its last member may have closed it while we waited: then open anew.
        if (groups.get(key) !== shared) continue
        shared.members.add(heard)
        return { key, shared, socket }
      }
    }),
    ({ key, shared, socket }) =>
      Effect.callback<void>((resume) => {
        shared.members.delete(heard)
        if (shared.members.size > 0) return resume(Effect.void)
        if (groups.get(key) === shared) groups.delete(key)
        try {
          socket.close(() => resume(Effect.void))
        } catch {
          resume(Effect.void) // already closed
        }
      })
  )

const share = (key: string, port: number, address: string, iface: string): SharedGroup => {
  const members = new Set<Heard>()
  const opened = Effect.runPromise(
    openGroup(port, address, iface, members).pipe(Effect.catch((e) => Effect.succeed(e)))
  )
  const shared: SharedGroup = { opened, members }
  groups.set(key, shared)
  // A failed open is not kept: the next member tries afresh.
  void opened.then((r) => {
    if (r instanceof JoinError && groups.get(key) === shared) groups.delete(key)
  })
  return shared
}

const openGroup = (port: number, address: string, iface: string, members: ReadonlySet<Heard>) =>
  Effect.gen(function*() {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: true, reusePort: true })
    const closeOnFailure = <A, E>(effect: Effect.Effect<A, E>) =>
      Effect.tapError(effect, () => Effect.sync(() => socket.close()))
    yield* closeOnFailure(bind(socket, port, address))
    yield* closeOnFailure(trying(`cannot join ${address} on ${iface}`, "NoMulticast", () => socket.addMembership(address, iface)))
    receiveBuffer(socket)
    socket.on("message", (bytes, from) => {
      // Every member here hears this datagram: the first to decode it decodes it for all.
      const once: DecodedOnce = {}
      for (const heard of members) heard(bytes, from, once)
    })
    socket.on("error", () => {})
    return socket
  })

/** A bigger receive buffer rides out bursts (many probe answers at once); the kernel caps it at net.core.rmem_max, which is fine. */
const receiveBuffer = (socket: Dgram.Socket) => {
  try {
    socket.setRecvBufferSize(4 * 1024 * 1024)
  } catch {
    // keep the default
  }
}

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

      const groupCache: SenderCache = {}
      if (config.multicast) {
        yield* joinGroup(config.port, config.address, iface, (bytes, from, once) =>
          inlet.receive(bytes, "udp", from.address, groupCache, from.port, once))
      }

      // Our own socket: probe answers, direct datagrams, and seed probes (on `seedPort` when fixed).
      const direct = yield* open({ type: "udp4" })
      yield* bind(direct, config.seedPort, config.hostOnly ? "127.0.0.1" : "0.0.0.0")
      yield* trying(`cannot send multicast through ${iface}`, "NoMulticast", () => {
        direct.setMulticastInterface(iface)
        direct.setMulticastTTL(config.remote)
        direct.setMulticastLoopback(true)
      })

      receiveBuffer(direct)
      const directCache: SenderCache = {}
      direct.on("message", (bytes, from) => inlet.receive(bytes, "udp", from.address, directCache, from.port))
      // Errors after bind (e.g. ICMP unreachable reported on send) must not crash the member.
      direct.on("error", () => {})

      const sendBytes = (bytes: Uint8Array, port: number, address: string) =>
        Effect.callback<void, ProtocolFailure>((resume) => {
          stats.wrote(bytes.length)
          direct.send(bytes, port, address, (e) =>
            resume(e ? Effect.fail(new ProtocolFailure({ protocol: "udp", message: e.message, cause: e })) : Effect.void))
        })
      const transmit = (frame: Frame, port: number, address: string) =>
        Effect.suspend((): Effect.Effect<void, FrameTooLarge | ProtocolFailure> => {
          const bytes = inlet.encode(frame)
          if (bytes.length > MAX_DATAGRAM) {
            return Effect.fail(new FrameTooLarge({ protocol: "udp", size: bytes.length, limit: MAX_DATAGRAM }))
          }
          return sendBytes(bytes, port, address)
        })

      return {
        name: "udp",
        port: direct.address().port,
        maxFrame: MAX_DATAGRAM,
        send: (to: Endpoint, frame: Frame) => transmit(frame, to.port, to.address),
        // Without the group, there is no one to multicast to: broadcasts go to members one by one.
        multicast: config.multicast ? (frame: Frame) => transmit(frame, config.port, config.address) : () => Effect.void,
        multicastBytes: (bytes: Uint8Array) => sendBytes(bytes, config.port, config.address)
      } satisfies UdpProtocol
    })
}
