/**
 * The write buffers of a stream protocol, reused: frames are encoded into
 * them back to back, and a buffer goes back to the pool once the kernel has
 * its bytes and no connection fills it.
 */

/** Past this much unsent data a sender waits for the socket to drain (the pool is sized by it). */
export const HIGH_WATER = 4 * 1024 * 1024
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

/** A write buffer: reusable once no write of it is pending and no connection fills it. */
export interface Chunk {
  readonly buf: Buffer
  writes: number
  retired: boolean
}

/** One protocol's pool: whole chunks, and large frames' own buffers by capacity. */
export class WriteBuffers {
  readonly #free: Array<Chunk> = []
  readonly #large = new Map<number, Array<Buffer>>()
  #largeBytes = 0
  /** Whether anything was reused since the last sweep. */
  #used = false
  /** A chunk to fill: a free one, else a new one. */
  take(): Chunk {
    const reused = this.#free.pop()
    if (reused === undefined) return { buf: Buffer.allocUnsafeSlow(CHUNK_BYTES), writes: 0, retired: false }
    this.#used = true
    reused.retired = false
    return reused
  }
  release(chunk: Chunk): void {
    if (this.#free.length < MAX_FREE_CHUNKS) this.#free.push(chunk)
  }
  /** A buffer of its own for a large frame of `need` bytes. */
  takeLarge(need: number): Buffer {
    const capacity = Math.ceil(need / LARGE_STEP) * LARGE_STEP
    const reused = this.#large.get(capacity)?.pop()
    if (reused === undefined) return Buffer.allocUnsafeSlow(capacity)
    this.#used = true
    this.#largeBytes -= capacity
    return reused
  }
  releaseLarge(buf: Buffer): void {
    if (this.#largeBytes + buf.length > LARGE_POOL_BYTES) return
    this.#largeBytes += buf.length
    const kept = this.#large.get(buf.length)
    if (kept === undefined) this.#large.set(buf.length, [buf])
    else kept.push(buf)
  }
  /** The idle sweep: a pool nobody took from since the last one lets its buffers go. */
  sweep(): void {
    if (!this.#used) {
      this.#free.length = 0
      this.#large.clear()
      this.#largeBytes = 0
    }
    this.#used = false
  }
}
