/**
 * What tcp and unix sockets share: one listening socket, and one persistent
 * connection per peer, reused: ours to it, or the one it opened to us when
 * we have none (see `ReturnPath`), so frames go both ways on a connection.
 * Frames are length-prefixed (u32
 * big-endian, the frame's size); a prefix above `maxFrame` is an attack or a
 * bug, so that connection is dropped (counted `oversize`) rather than buffered.
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
import type { ClusterConfig } from "../../schema/Config.ts"
import { FrameTooLarge, type JoinError, ProtocolFailure } from "../../schema/Errors.ts"
import { type Frame, frameSize, type SenderCache } from "../../schema/Frame.ts"
import type { Stats } from "../Stats.ts"
import type { Service } from "../../schema/Service.ts"
import type { Endpoint, Inlet, Protocol, ReturnPath } from "../Protocol.ts"

const PREFIX = 4
/** Past this much unsent data a sender waits for the socket to drain. */
const HIGH_WATER = 4 * 1024 * 1024
/** A batch this large is written at once rather than at the end of the tick. */
const BATCH_BYTES = 64 * 1024
/** Sends that may wait (for a connect or a drain) on one peer's connection. */
const MAX_WAITING = 4096
/**
 * Frames are encoded back to back into write buffers of this size, which are
 * reused once written: fresh memory costs a page fault per 4 KiB, far more
 * than the copy itself (a 64 KiB frame into a new buffer: about 10 us; into a
 * reused one: under 1 us).
 */
const CHUNK_BYTES = 256 * 1024
/**
 * Free write buffers a protocol keeps for reuse (as many as a connection may
 * have unsent); more are left to the garbage collector, and the idle sweep
 * lets go of those unused since its last pass.
 */
const MAX_FREE_CHUNKS = 16
/**
 * Frames of BATCH_BYTES and up are a write each, in a buffer of their own;
 * those buffers are kept for reuse by size (rounded up to this step) while
 * the kept ones total at most LARGE_POOL_BYTES: enough for what a sender may
 * have unsent (HIGH_WATER) and the frames being filled.
 */
const LARGE_STEP = 16 * 1024
const LARGE_POOL_BYTES = 2 * HIGH_WATER

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
    let at = 0
    if (this.buffered === 0) {
      // Nothing held back (the common case): whole frames are cut from the chunk in place.
      while (chunk.length - at >= PREFIX) {
        const size = chunk.readUInt32BE(at)
        if (size > this.maxFrame) return false
        const end = at + PREFIX + size
        if (end > chunk.length) break
        frame(chunk.subarray(at + PREFIX, end))
        at = end
      }
      if (at === chunk.length) return true
    }
    this.chunks.push(at === 0 ? chunk : chunk.subarray(at))
    this.buffered += chunk.length - at
    while (this.buffered >= PREFIX) {
      let head = this.chunks[0]!
      if (head.length < PREFIX) head = this.join(PREFIX)
      const size = head.readUInt32BE(0)
      if (size > this.maxFrame) return false
      const end = PREFIX + size
      if (this.buffered < end) return true
      if (head.length < end) head = this.join(end)
      frame(head.subarray(PREFIX, end))
      this.buffered -= end
      if (head.length === end) this.chunks.shift()
      else this.chunks[0] = head.subarray(end)
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

/** A write buffer: reusable once no write of it is pending and no connection fills it. */
interface Chunk {
  readonly buf: Buffer
  writes: number
  retired: boolean
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
      const conn = newConnection(socket, undefined, address)
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
     * itself as their way back. `address` is the peer's (ours to it: known once connected).
     */
    const readFrames = (conn: Connection, address: string | undefined) => {
      const { socket } = conn
      const reader = new FrameReader(options.maxFrame)
      const cache: SenderCache = {}
      let from = address
      let slowDown = false
      const frame = (bytes: Buffer) => {
        if (!inlet.receive(bytes, name, from!, cache, 0, undefined, conn)) slowDown = true
      }
      socket.on("data", (chunk: Buffer) => {
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
      })
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
      if (!freeUsed) {
        free.length = 0
        freeLarge.clear()
        freeLargeBytes = 0
      }
      freeUsed = false
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
     * connected), or, with the peer's `address`, one it opened to us (open now).
     */
    const newConnection = (socket: Net.Socket, key: string | undefined, address?: string): Connection => {
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
        adopt: (peer) => {
          if (conn.peer === peer) return
          conn.peer = peer
          adopt(conn, peer)
        }
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
      readFrames(conn, address)
      return conn
    }

    const connect = (to: Endpoint, key: string): Connection => {
      const socket = net.connect({ ...options.connectTo(to), noDelay: true } as Net.NetConnectOpts)
      stats.connection("opened")
      const conn = newConnection(socket, key)
      connections.set(key, conn)
      return conn
    }

    /**
     * A peer's connection to us becomes our way to it while we have none of
     * our own. `peer` is the service the registry matched to the connection's
     * frames, at the address they come from: the one we would connect to.
     */
    const adopt = (conn: Connection, peer: Service) => {
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

    const free: Array<Chunk> = []
    let freeUsed = false
    const takeChunk = (): Chunk => {
      const reused = free.pop()
      if (reused === undefined) return { buf: Buffer.allocUnsafeSlow(CHUNK_BYTES), writes: 0, retired: false }
      freeUsed = true
      reused.retired = false
      return reused
    }
    const release = (chunk: Chunk) => {
      if (free.length < MAX_FREE_CHUNKS) free.push(chunk)
    }
    // Large frames' own buffers, free for reuse, by capacity.
    const freeLarge = new Map<number, Array<Buffer>>()
    let freeLargeBytes = 0
    const takeLarge = (need: number): Buffer => {
      const capacity = Math.ceil(need / LARGE_STEP) * LARGE_STEP
      const reused = freeLarge.get(capacity)?.pop()
      if (reused === undefined) return Buffer.allocUnsafeSlow(capacity)
      freeUsed = true
      freeLargeBytes -= capacity
      return reused
    }
    const releaseLarge = (buf: Buffer) => {
      if (freeLargeBytes + buf.length > LARGE_POOL_BYTES) return
      freeLargeBytes += buf.length
      const kept = freeLarge.get(buf.length)
      if (kept === undefined) freeLarge.set(buf.length, [buf])
      else kept.push(buf)
    }
    /** The connection stops filling its chunk, which is reused once its writes are done. */
    const retire = (conn: Connection) => {
      const chunk = conn.chunk
      if (chunk === undefined) return
      conn.chunk = undefined
      conn.start = conn.used = 0
      chunk.retired = true
      if (chunk.writes === 0) release(chunk)
    }

    /**
     * Hands bytes to the socket, or counts their frames unsent when it is
     * gone; `done` runs once the socket is through with them (at once then).
     * A write the kernel took whole is done as soon as `write` returns (the
     * socket then has nothing pending): its callback comes only when the
     * tick ends, and a sender that writes on in the same tick would otherwise
     * find every buffer still in use.
     */
    const writeOut = (socket: Net.Socket, bytes: Buffer, frames: number, done: () => void): void => {
      if (socket.destroyed) {
        for (let i = 0; i < frames; i++) stats.drop("unsent")
        done()
        return
      }
      stats.wrote(bytes.length)
      let settled = false
      const settle = () => {
        if (settled) return
        settled = true
        done()
      }
      socket.write(bytes, settle)
      if (socket.writableLength === 0) settle()
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
      writeOut(conn.socket, chunk.buf.subarray(start, used), frames, () => {
        if (--chunk.writes === 0 && chunk.retired) release(chunk)
      })
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
        const own = takeLarge(need)
        own.writeUInt32BE(size, 0)
        inlet.encodeInto(frame, own, PREFIX)
        writeOut(conn.socket, own.subarray(0, need), 1, () => releaseLarge(own))
        return
      }
      if (conn.chunk !== undefined && CHUNK_BYTES - conn.used < need) {
        flush(conn)
        retire(conn)
      }
      conn.chunk ??= takeChunk()
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
        queueMicrotask(conn.endTick)
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
      return conn !== undefined && sendOn(conn, frame)
    }
    /** A frame on this connection at once, if it is ready and the frame fits; false: nothing was sent. */
    const sendOn = (conn: Connection, frame: Frame): boolean => {
      if (!ready(conn)) return false
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
