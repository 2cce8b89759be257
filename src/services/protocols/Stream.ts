/**
 * What tcp and unix sockets share: one listening socket, and persistent
 * outbound connections reused per peer. Frames are length-prefixed (u32
 * big-endian, the frame's size); a prefix above `maxFrame` is an attack or a
 * bug, so that connection is dropped (counted `oversize`) rather than buffered.
 * Frames written in one tick leave in one write; a full message queue pauses
 * reading (backpressure to the sender).
 */
import net from "node:net"
import { Duration, Effect, Schedule, type Scope } from "effect"
import { isLocalAddress } from "../../internal/host.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { FrameTooLarge, type JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import { type Frame, frameSize, type SenderCache } from "../../schema/Frame.ts"
import type { Stats } from "../Stats.ts"
import type { Service } from "../../schema/Service.ts"
import type { Endpoint, Inlet, Protocol } from "../Transport.ts"

const PREFIX = 4
/** Past this much unsent data a sender waits for the socket to drain. */
const HIGH_WATER = 4 * 1024 * 1024
/** A batch this large is written at once rather than at the end of the tick. */
const BATCH_BYTES = 64 * 1024
/** Sends that may wait (for a connect or a drain) on one peer's connection. */
const MAX_WAITING = 4096

/** What one member accepts: connections in all, from one address, and how long one may idle. */
export interface StreamLimits {
  readonly connections: number
  readonly connectionsPerPeer: number
  readonly idleMillis: number
}

/**
 * Cuts a byte stream into frames. Chunks are kept as they come and joined
 * only when a frame spans them, so a large frame costs one copy.
 */
export class FrameReader {
  private chunks: Array<Buffer> = []
  private buffered = 0
  private readonly maxFrame: number
  constructor(maxFrame: number) {
    this.maxFrame = maxFrame
  }
  /** Feeds a chunk; calls `frame` for each complete frame. Returns false on an oversize prefix. */
  push(chunk: Buffer, frame: (bytes: Buffer) => void): boolean {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    while (this.buffered >= PREFIX) {
      let head = this.chunks[0]!
      if (head.length < PREFIX) head = this.join(PREFIX)
      const size = head.readUInt32BE(0)
      if (size > this.maxFrame) return false
      if (this.buffered < PREFIX + size) return true
      if (head.length < PREFIX + size) head = this.join(PREFIX + size)
      frame(head.subarray(PREFIX, PREFIX + size))
      const rest = head.subarray(PREFIX + size)
      this.buffered -= PREFIX + size
      if (rest.length === 0) this.chunks.shift()
      else this.chunks[0] = rest
    }
    return true
  }
  /** Joins just enough leading chunks to hold `bytes`; later bytes stay where they are. */
  private join(bytes: number): Buffer {
    const out = Buffer.allocUnsafe(bytes)
    let filled = 0
    while (filled < bytes) {
      const c = this.chunks[0]!
      const take = Math.min(c.length, bytes - filled)
      c.copy(out, filled, 0, take)
      filled += take
      if (take === c.length) this.chunks.shift()
      else this.chunks[0] = c.subarray(take)
    }
    this.chunks.unshift(out)
    return out
  }
}

/** An outbound connection: opening (senders wait), then open until it closes. */
interface Connection {
  readonly socket: net.Socket
  open: boolean
  waiting: Array<(error?: Error) => void>
  /** Frames of this tick, not yet written. */
  batch: Array<Buffer>
  batched: number
}

export interface StreamOptions {
  readonly name: string
  readonly maxFrame: number
  readonly inlet: Inlet
  readonly stats: Stats["Service"]
  readonly limits: StreamLimits
  /** Starts `server` listening; returns the port to advertise. Called again on `rebuild`. */
  readonly listen: (server: net.Server) => Effect.Effect<number, JoinError>
  /** Stops listening for good (e.g. removes a socket file). */
  readonly unlisten?: (server: net.Server) => Effect.Effect<void>
  /** How to reach a peer's endpoint. */
  readonly connectTo: (to: Endpoint) => net.NetConnectOpts
  /** What identifies a peer's listener (one connection each). */
  readonly keyOf: (to: Endpoint) => string
  /** The address a connection's frames are from (tcp: the peer's; unix: this host). */
  readonly addressOf: (socket: net.Socket) => string
  /** How to reach our own listener (a self-check before rebuilding it). */
  readonly selfEndpoint: (port: number) => net.NetConnectOpts
}

/** The limits a configuration sets. */
export const streamLimits = (config: ClusterConfig): StreamLimits => ({
  connections: config.maxConnections,
  connectionsPerPeer: config.maxConnectionsPerPeer,
  idleMillis: Duration.toMillis(config.idleTimeout)
})

/** A stream protocol for this member, owned by the current scope. */
export const makeStreamProtocol = (options: StreamOptions): Effect.Effect<Protocol, JoinError, Scope.Scope> =>
  Effect.gen(function*() {
    const { name, stats, inlet } = options
    const accepted = new Set<net.Socket>()
    const connections = new Map<string, Connection>()

    const perPeer = new Map<string, number>()
    const accept = (socket: net.Socket) => {
      const address = options.addressOf(socket)
      const fromPeer = perPeer.get(address) ?? 0
      // Limits: a peer, or everyone together, cannot hold more than their share.
      // (Members on this host all come from loopback: the per-peer limit is for other hosts.)
      if (
        accepted.size >= options.limits.connections ||
        (fromPeer >= options.limits.connectionsPerPeer && !isLocalAddress(address))
      ) {
        stats.drop("too-many-connections")
        socket.destroy()
        return
      }
      accepted.add(socket)
      perPeer.set(address, fromPeer + 1)
      stats.connection("accepted")
      const reader = new FrameReader(options.maxFrame)
      const cache: SenderCache = {}
      let slowDown = false
      const frame = (bytes: Buffer) => {
        if (!inlet.receive(bytes, name, address, cache)) slowDown = true
      }
      socket.on("data", (chunk) => {
        if (!reader.push(chunk, frame)) {
          stats.drop("oversize")
          socket.destroy()
          return
        }
        // The message queue is full: stop reading until it drains; the peer's
        // writes back up into its own buffers (flow control).
        if (slowDown) {
          slowDown = false
          socket.pause()
          inlet.whenDrained(() => socket.resume())
        }
      })
      socket.on("error", () => {}) // a reset peer is not our failure
      socket.on("close", () => {
        accepted.delete(socket)
        activity.delete(socket)
        const left = (perPeer.get(address) ?? 1) - 1
        if (left === 0) perPeer.delete(address)
        else perPeer.set(address, left)
      })
    }

    const newServer = () => {
      const server = net.createServer({ noDelay: true }, accept)
      server.on("error", () => {})
      return server
    }
    const stop = (server: net.Server) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
      }).pipe(Effect.andThen(options.unlisten?.(server) ?? Effect.void))

    // An idle connection is closed (a peer reconnects when it has something to
    // say). A sweep finds them: a timer per socket would be re-armed on every
    // read and write, a cost on the hot path.
    const activity = new Map<net.Socket, { bytes: number; since: number }>()
    const idleMillis = options.limits.idleMillis
    const closeIdle = Effect.sync(() => {
      const now = Date.now()
      const check = (socket: net.Socket) => {
        const bytes = socket.bytesRead + socket.bytesWritten
        const seen = activity.get(socket)
        if (seen === undefined || seen.bytes !== bytes) activity.set(socket, { bytes, since: now })
        else if (now - seen.since >= idleMillis) socket.destroy()
      }
      for (const socket of accepted) check(socket)
      for (const conn of connections.values()) check(conn.socket)
    })
    yield* closeIdle.pipe(
      Effect.repeat(Schedule.spaced(Duration.millis(Math.max(20, Math.min(idleMillis / 4, 30_000))))),
      Effect.forkScoped
    )

    let server = newServer()
    let port = yield* options.listen(server)
    // Leaving: what we sent must still arrive. Outbound connections flush and
    // end (FIN after the last byte), bounded by a second; the rest close at once.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        for (const s of accepted) s.destroy()
        const ending = [...connections.values()].map((c) =>
          Effect.callback<void>((resume) => {
            flush(c)
            if (c.socket.destroyed) return resume(Effect.void)
            const timer = setTimeout(() => c.socket.destroy(), 1000)
            c.socket.once("close", () => {
              clearTimeout(timer)
              resume(Effect.void)
            })
            c.socket.end()
          })
        )
        return Effect.all(ending, { concurrency: "unbounded", discard: true }).pipe(Effect.andThen(stop(server)))
      })
    )

    const connect = (to: Endpoint, key: string): Connection => {
      const socket = net.connect({ ...options.connectTo(to), noDelay: true } as net.NetConnectOpts)
      stats.connection("opened")
      const conn: Connection = { socket, open: false, waiting: [], batch: [], batched: 0 }
      const settle = (error?: Error) => {
        const waiting = conn.waiting
        conn.waiting = []
        for (const w of waiting) w(error)
      }
      socket.once("connect", () => {
        conn.open = true
        settle()
      })
      socket.on("drain", () => settle())
      socket.on("error", (e) => settle(e))
      socket.on("close", () => {
        activity.delete(socket)
        conn.open = false
        if (connections.get(key) === conn) connections.delete(key)
        settle(new Error("connection closed"))
      })
      // We never expect data on an outbound connection; draining keeps it flowing.
      socket.on("data", () => {})
      connections.set(key, conn)
      return conn
    }

    const failure = (message: string, cause?: unknown) => new ProtocolFailure({ protocol: name, message, cause })

    // Frames written in one tick go out in one write: far fewer syscalls
    // under load, and no added latency (the flush runs when the tick ends).
    const flush = (conn: Connection) => {
      const batch = conn.batch
      if (batch.length === 0) return
      const bytes = conn.batched
      conn.batch = []
      conn.batched = 0
      if (conn.socket.destroyed) {
        for (let i = 0; i < batch.length; i++) stats.drop("unsent")
        return
      }
      stats.wrote(bytes)
      conn.socket.write(batch.length === 1 ? batch[0]! : Buffer.concat(batch, bytes))
    }
    const enqueue = (conn: Connection, bytes: Buffer) => {
      conn.batch.push(bytes)
      conn.batched += bytes.length
      if (conn.batched >= BATCH_BYTES) flush(conn)
      else if (conn.batch.length === 1) queueMicrotask(() => flush(conn))
    }

    /** The frame with its length prefix, or undefined when it exceeds `maxFrame`. */
    const framed = (frame: Frame): Buffer | undefined => {
      const bytes = inlet.encode(frame, PREFIX)
      const size = bytes.length - PREFIX
      if (size > options.maxFrame) return undefined
      bytes.writeUInt32BE(size, 0)
      return bytes
    }

    const ready = (conn: Connection): boolean =>
      conn.open && conn.waiting.length === 0 && conn.socket.writableLength + conn.batched < HIGH_WATER
    const keyOf = options.keyOf
    // The hot path sends to the same service object again and again: remember
    // its connection by object, sparing a key string per frame.
    const byService = new WeakMap<Service, Connection>()

    const sendNow = (to: Endpoint, frame: Frame): boolean => {
      let conn = byService.get(to.service)
      if (conn === undefined || conn.socket.destroyed) {
        conn = connections.get(keyOf(to))
        if (conn !== undefined) byService.set(to.service, conn)
      }
      if (conn === undefined || !ready(conn)) return false
      const bytes = framed(frame)
      if (bytes === undefined) return false
      enqueue(conn, bytes)
      return true
    }

    const send = (to: Endpoint, frame: Frame): Effect.Effect<void, FrameTooLarge | ProtocolFailure> =>
      Effect.suspend((): Effect.Effect<void, FrameTooLarge | ProtocolFailure> => {
        const bytes = framed(frame)
        if (bytes === undefined) {
          return Effect.fail(new FrameTooLarge({ protocol: name, size: frameSize(frame), limit: options.maxFrame }))
        }
        const key = keyOf(to)
        const conn = connections.get(key) ?? connect(to, key)
        // Frames queued behind a connect or a drain keep their order: join them.
        if (ready(conn)) {
          enqueue(conn, bytes)
          return Effect.void
        }
        // Opening, or too much unsent: wait for connect or drain, then write;
        // but only so many may wait for one peer: past that, this protocol is full.
        if (conn.waiting.length >= MAX_WAITING) return Effect.fail(failure(`${MAX_WAITING} sends already wait for this peer`))
        return Effect.callback<void, ProtocolFailure>((resume) => {
          conn.waiting.push((error?: Error) => {
            if (error !== undefined || conn.socket.destroyed) {
              resume(Effect.fail(failure(error?.message ?? "connection closed", error)))
              return
            }
            enqueue(conn, bytes)
            resume(Effect.void)
          })
        })
      })

    return {
      name,
      get port() {
        return port
      },
      maxFrame: options.maxFrame,
      send,
      sendNow,
      close: Effect.suspend(() => stop(server)),
      rebuild: Effect.gen(function*() {
        yield* stop(server)
        server = newServer()
        port = yield* options.listen(server)
        return port
      }),
      check: Effect.callback<boolean>((resume) => {
        const probe = net.connect(options.selfEndpoint(port))
        const done = (ok: boolean) => {
          probe.destroy()
          resume(Effect.succeed(ok))
        }
        probe.once("connect", () => done(true))
        probe.once("error", () => done(false))
      })
    } satisfies Protocol
  })
