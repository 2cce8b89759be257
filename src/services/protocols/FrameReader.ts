/**
 * Cutting a stream protocol's bytes into frames: a u32 big-endian length
 * prefix, then the frame.
 */

/** The length prefix before each frame on a stream. */
export const PREFIX = 4

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
