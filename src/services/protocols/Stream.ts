/**
 * What tcp and unix sockets share: one listening socket, and one persistent
 * connection per peer, reused: ours to it, or the one it opened to us when
 * we have none (see `ReturnPath`), so frames go both ways on a connection.
 * Frames are length-prefixed (u32 big-endian, the frame's size; cut by
 * `FrameReader`); a prefix above `maxFrame` is an attack or a bug, so that
 * connection is dropped (counted `oversize`) rather than buffered.
 * A tick's first frame to a peer is written at once, the rest of that tick's
 * in one write when it ends; a full message queue pauses reading
 * (backpressure to the sender).
 */
import { net } from "../../internal/builtins.ts"
import type * as Net from "node:net"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { isLocalAddress } from "../../internal/host.ts"
import { atTickEnd } from "../../internal/tick.ts"
import type { ClusterConfig } from "../../schema/Config.ts"
import { FrameTooLarge, type JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import { type Frame, frameSize, type SenderCache } from "../../schema/Frame.ts"
import type { Stats } from "../Stats.ts"
import type { Service } from "../../schema/Service.ts"
import type { Endpoint, Inlet, Protocol, ReturnPath } from "../Protocol.ts"
import { FrameReader, PREFIX } from "./FrameReader.ts"
import { type Chunk, HIGH_WATER, WriteBuffers } from "./WriteBuffers.ts"

/** A batch this large is written at once rather than at the end of the tick. */
const BATCH_BYTES = 64 * 1024
/** A read's most: Node's own for a stream. */
const READ_BYTES = 64 * 1024
/**
 * The buffer dialed connections read into. One a process is enough: a read
 * fills it and its callback copies the bytes out before the next read.
 */
let shared: Buffer | undefined
const readBuffer = () => (shared ??= Buffer.allocUnsafe(READ_BYTES))
/**
 * Where a read's bytes are copied to: small reads share a slab of this size,
 * larger ones get a buffer of their own. A buffer for each read cost 1.5-2 µs
 * of a round trip and GC work (the p99); Node's pool would let a kept
 * message hold on to 8 KiB. A kept message holds at most a slab.
 */
const READ_SLAB = 1024
let slab = Buffer.allocUnsafeSlow(0)
let slabUsed = 0
const copyOut = (into: Uint8Array, size: number): Buffer => {
  const bytes = size === into.length ? into : into.subarray(0, size)
  if (size > READ_SLAB / 2) {
    const own = Buffer.allocUnsafeSlow(size)
    own.set(bytes)
    return own
  }
  if (slabUsed + size > slab.length) {
    slab = Buffer.allocUnsafeSlow(READ_SLAB)
    slabUsed = 0
  }
  const chunk = slab.subarray(slabUsed, slabUsed + size)
  chunk.set(bytes)
  // The next one starts 8-aligned, as Node's pool does.
  slabUsed = (slabUsed + size + 7) & ~7
  return chunk
}
/** Sends that may wait (for a connect or a drain) on one peer's connection. */
const MAX_WAITING = 4096

/** What one member accepts: connections in all, from one address, and how long one may idle. */
export interface StreamLimits {
  readonly connections: number
  readonly connectionsPerPeer: number
  readonly idleMillis: number
}

/**
 * A connection, ours to a peer (opening: senders wait; then open until it
 * closes) or a peer's to us (open from the start). As a `ReturnPath` it may
 * become our way to that peer.
 */
interface Connection extends ReturnPath {
  readonly socket: Net.Socket
  open: boolean
  /** Its key in `connections` while it is our way to a peer. */
  key: string | undefined
  /** The peer last adopted from (the same service object again costs one comparison). */
  peer: Service | undefined
  waiting: Array<(error?: Error) => void>
  /**
   * The write buffer this connection fills: bytes before `start` are written
   * (or being written), `start` to `used` are this tick's frames (`frames` of them).
   */
  chunk: Chunk | undefined
  start: number
  used: number
  frames: number
  /** A flush at the end of this tick is queued. */
  ticking: boolean
  /** That flush: made once a connection, not once a tick. */
  readonly endTick: () => void
  /** What each pending write holds (its chunk, or a large frame's own buffer), oldest first; undefined once released. */
  readonly writing: Array<Chunk | Buffer | undefined>
  /** Every write's callback, made once a connection: writes end in order, so each ends the oldest. */
  readonly written: () => void
}

export interface StreamOptions {
  readonly name: string
  readonly maxFrame: number
  readonly inlet: Inlet
  readonly stats: Stats["Service"]
  readonly limits: StreamLimits
  /** Starts `server` listening; returns the port to advertise. Called again on `rebuild`. */
  readonly listen: (server: Net.Server) => Effect.Effect<number, JoinError>
  /** Stops listening for good (e.g. removes a socket file). */
  readonly unlisten?: (server: Net.Server) => Effect.Effect<void>
  /** How to reach a peer's endpoint. */
  readonly connectTo: (to: Endpoint) => Net.NetConnectOpts
  /** What identifies a peer's listener (one connection each). */
  readonly keyOf: (to: Endpoint) => string
  /** The address a connection's frames are from (tcp: the peer's; unix: this host). */
  readonly addressOf: (socket: Net.Socket) => string
  /** How to reach our own listener (a self-check before rebuilding it). */
  readonly selfEndpoint: (port: number) => Net.NetConnectOpts
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
    const accepted = new Map<Net.Socket, Connection>()
    const connections = new Map<string, Connection>()

    const perPeer = new Map<string, number>()
    // Set while leaving: a connection that comes in then is closed at once,
    // or the server's close would wait for it (a peer may hold it for minutes).
    let leaving = false
    const accept = (socket: Net.Socket) => {
      if (leaving) {
        socket.destroy()
        return
      }
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
      const conn = newConnection(socket, undefined)
      socket.on("data", frameSink(conn, address))
      accepted.set(socket, conn)
      perPeer.set(address, fromPeer + 1)
      stats.connection("accepted")
      socket.on("close", () => {
        accepted.delete(socket)
        const left = (perPeer.get(address) ?? 1) - 1
        if (left === 0) perPeer.delete(address)
        else perPeer.set(address, left)
      })
    }

    /**
     * Cuts a connection's bytes into frames for the inlet, the connection
     * itself as their way back: the handler of each chunk read. `address`
     * is the peer's (ours to it: known once connected).
     */
    const frameSink = (conn: Connection, address: string | undefined) => {
      const { socket } = conn
      const reader = new FrameReader(options.maxFrame)
      const cache: SenderCache = {}
      let from = address
      let slowDown = false
      const frame = (bytes: Buffer) => {
        if (!inlet.receive(bytes, name, from!, cache, 0, undefined, conn)) slowDown = true
      }
      return (chunk: Buffer) => {
        from ??= options.addressOf(socket)
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
      }
    }

    const newServer = () => {
      const server = net.createServer({ noDelay: true }, accept)
      server.on("error", () => {})
      return server
    }
    const stop = (server: Net.Server) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
      }).pipe(Effect.andThen(options.unlisten?.(server) ?? Effect.void))

    // An idle connection is closed (a peer reconnects when it has something to
    // say). A sweep finds them: a timer per socket would be re-armed on every
    // read and write, a cost on the hot path.
    const activity = new Map<Net.Socket, { bytes: number; since: number }>()
    const idleMillis = options.limits.idleMillis
    const closeIdle = Effect.sync(() => {
      const now = Date.now()
      const check = (conn: Connection) => {
        const socket = conn.socket
        const bytes = socket.bytesRead + socket.bytesWritten
        const seen = activity.get(socket)
        if (seen === undefined || seen.bytes !== bytes) activity.set(socket, { bytes, since: now })
        else if (now - seen.since >= idleMillis) socket.destroy()
        // A connection that wrote nothing since the last pass lets go of its write buffer.
        if (conn.chunk !== undefined && conn.used === conn.start && activity.get(socket)?.since !== now) retire(conn)
      }
      for (const conn of accepted.values()) check(conn)
      for (const conn of connections.values()) if (!accepted.has(conn.socket)) check(conn)
      buffers.sweep()
    })

    let server = newServer()
    let port = yield* options.listen(server)
    // Leaving: what we sent must still arrive. Our ways to peers flush and
    // end (FIN after the last byte), bounded by a second; the rest close at once.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        leaving = true
        for (const c of accepted.values()) if (c.key === undefined) c.socket.destroy()
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

    /**
     * A connection on `socket`: ours to the peer at `key` (open once
     * connected), or one a peer opened to us (open now); its reads are wired by the caller.
     */
    const newConnection = (socket: Net.Socket, key: string | undefined): Connection => {
      const conn: Connection = {
        socket,
        open: key === undefined,
        key,
        peer: undefined,
        waiting: [],
        chunk: undefined,
        start: 0,
        used: 0,
        frames: 0,
        ticking: false,
        endTick: () => {
          conn.ticking = false
          flush(conn)
        },
        writing: [],
        written: () => {
          const held = conn.writing.shift()
          if (held !== undefined) release(held)
        },
        adopt: (peer) => adopt(conn, peer)
      }
      const settle = (error?: Error) => {
        const waiting = conn.waiting
        conn.waiting = []
        for (const w of waiting) w(error)
      }
      if (key !== undefined) {
        socket.once("connect", () => {
          conn.open = true
          settle()
        })
      }
      socket.on("drain", () => settle())
      // A reset peer is not our failure: senders waiting on it fall back.
      socket.on("error", (e) => settle(e))
      socket.on("close", () => {
        activity.delete(socket)
        conn.open = false
        retire(conn)
        if (conn.key !== undefined && connections.get(conn.key) === conn) connections.delete(conn.key)
        settle(new Error("connection closed"))
      })
      return conn
    }

    /**
     * Ours to a peer. Its reads skip the stream machinery (`onread`: each
     * read lands in one buffer all such connections share, and the callback
     * copies it out), which a round trip's asker otherwise pays once a
     * reply; accepted sockets have no such option and read as streams.
     */
    const connect = (to: Endpoint, key: string): Connection => {
      let sink: (chunk: Buffer) => void
      const onread = {
        buffer: readBuffer(),
        callback: (size: number, into: Uint8Array) => {
          sink(copyOut(into, size))
          return true
        }
      }
      const socket = net.connect({ ...options.connectTo(to), noDelay: true, onread } as Net.NetConnectOpts)
      stats.connection("opened")
      const conn = newConnection(socket, key)
      sink = frameSink(conn, undefined)
      connections.set(key, conn)
      return conn
    }

    /**
     * A peer's connection to us becomes our way to it while we have none of
     * our own. `peer` is the service the registry matched to the connection's
     * frames, at the address they come from: the one we would connect to.
     */
    const adopt = (conn: Connection, peer: Service) => {
      if (conn.peer === peer) return // the same service object again: one comparison a frame
      conn.peer = peer
      if (conn.key !== undefined || !conn.open) return
      const port = peer.protocols.find((p) => p.protocol === name)?.port
      if (port === undefined) return
      const key = keyOf({ address: peer.address, port, service: peer })
      if (connections.has(key)) return
      conn.key = key
      connections.set(key, conn)
    }

    const failure = (message: string, cause?: unknown) => new ProtocolFailure({ protocol: name, message, cause })
    const tooLarge = (frame: Frame) => new FrameTooLarge({ protocol: name, size: frameSize(frame), limit: options.maxFrame })

    const buffers = new WriteBuffers()
    /** The connection stops filling its chunk, which is reused once its writes are done. */
    const retire = (conn: Connection) => {
      const chunk = conn.chunk
      if (chunk === undefined) return
      conn.chunk = undefined
      conn.start = conn.used = 0
      chunk.retired = true
      if (chunk.writes === 0) buffers.release(chunk)
    }

    /** A write is done with what held its bytes: a chunk no write uses any more goes back to the pool once retired. */
    const release = (held: Chunk | Buffer) => {
      if (held instanceof Uint8Array) buffers.releaseLarge(held)
      else if (--held.writes === 0 && held.retired) buffers.release(held)
    }
    /**
     * Hands bytes to the socket, or counts their frames unsent when it is
     * gone; `held` is released once the socket is through with them (at once then).
     * A write the kernel took whole is done as soon as `write` returns (the
     * socket then has nothing pending): its callback comes only when the
     * tick ends, and a sender that writes on in the same tick would otherwise
     * find every buffer still in use. One callback a connection serves
     * every write (no closure a write).
     */
    const writeOut = (conn: Connection, bytes: Buffer, frames: number, held: Chunk | Buffer): void => {
      const socket = conn.socket
      if (socket.destroyed) {
        for (let i = 0; i < frames; i++) stats.drop("unsent")
        release(held)
        return
      }
      stats.wrote(bytes.length)
      socket.write(bytes, conn.written)
      if (socket.writableLength === 0) {
        conn.writing.push(undefined)
        release(held)
      } else conn.writing.push(held)
    }

    // Frames after the first in a tick go out in one write: far fewer
    // syscalls under load, and little added latency (the flush runs when the tick ends).
    const flush = (conn: Connection) => {
      const chunk = conn.chunk
      if (chunk === undefined || conn.used === conn.start) return
      const { start, used, frames } = conn
      conn.start = used
      conn.frames = 0
      chunk.writes++
      writeOut(conn, chunk.buf.subarray(start, used), frames, chunk)
      // All of it is the kernel's already: the next frames start at the top again, in warm memory.
      if (chunk.writes === 0 && conn.chunk === chunk) conn.start = conn.used = 0
    }
    /** Encodes a frame of `size` bytes (its `encodedSize`, at most `maxFrame`) for this tick's write. */
    const enqueue = (conn: Connection, frame: Frame, size: number) => {
      const need = PREFIX + size
      if (need >= BATCH_BYTES) {
        // A frame that is a write by itself gets a buffer of its own (kept
        // for reuse by size), after what is queued: it would cut a write
        // buffer short, and under backpressure many such writes wait at once.
        flush(conn)
        const own = buffers.takeLarge(need)
        own.writeUInt32BE(size, 0)
        inlet.encodeInto(frame, own, PREFIX)
        writeOut(conn, own.subarray(0, need), 1, own)
        return
      }
      if (conn.chunk !== undefined && conn.chunk.buf.length - conn.used < need) {
        flush(conn)
        retire(conn)
      }
      conn.chunk ??= buffers.take()
      const buf = conn.chunk.buf
      buf.writeUInt32BE(size, conn.used)
      inlet.encodeInto(frame, buf, conn.used + PREFIX)
      conn.used += need
      conn.frames++
      if (!conn.ticking) {
        // The tick's first frame goes out at once (a request or a reply is
        // not held back while the rest of the tick runs); the frames after
        // it in this tick leave together when it ends.
        conn.ticking = true
        flush(conn)
        atTickEnd(conn.endTick)
      } else if (conn.used - conn.start >= BATCH_BYTES) flush(conn)
    }

    const ready = (conn: Connection): boolean =>
      conn.open && conn.waiting.length === 0 && conn.socket.writableLength + conn.used - conn.start < HIGH_WATER
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
      const size = inlet.encodedSize(frame)
      if (size > options.maxFrame) return false
      enqueue(conn, frame, size)
      return true
    }

    const send = (to: Endpoint, frame: Frame): Effect.Effect<void, FrameTooLarge | ProtocolFailure> =>
      Effect.suspend((): Effect.Effect<void, FrameTooLarge | ProtocolFailure> => {
        const size = inlet.encodedSize(frame)
        if (size > options.maxFrame) {
          return Effect.fail(tooLarge(frame))
        }
        const key = keyOf(to)
        const conn = connections.get(key) ?? connect(to, key)
        // Frames queued behind a connect or a drain keep their order: join them.
        if (ready(conn)) {
          enqueue(conn, frame, size)
          return Effect.void
        }
        // Opening, or too much unsent: wait for connect or drain, then write;
        // but only so many may wait for one peer: past that, this protocol is full.
        if (conn.waiting.length >= MAX_WAITING) return Effect.fail(failure(`${MAX_WAITING} sends already wait for this peer`))
        return Effect.callback<void, FrameTooLarge | ProtocolFailure>((resume) => {
          conn.waiting.push((error?: Error) => {
            if (error !== undefined || conn.socket.destroyed) {
              resume(Effect.fail(failure(error?.message ?? "connection closed", error)))
              return
            }
            // Sized again: a key installed meanwhile changes it.
            const now = inlet.encodedSize(frame)
            if (now > options.maxFrame) {
              resume(Effect.fail(tooLarge(frame)))
              return
            }
            enqueue(conn, frame, now)
            resume(Effect.void)
          })
        })
      })

    yield* closeIdle.pipe(
      Effect.repeat(Schedule.spaced(Duration.millis(Math.max(20, Math.min(idleMillis / 4, 30_000))))),
      Effect.forkScoped
    )

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
