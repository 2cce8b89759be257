/**
 * Text on the wire: strings as UTF-8 bytes, and a byte range compared.
 * Strings this short in ASCII (ops, most names) are measured, written and
 * read here in a loop: each call into Node's UTF-8 codec or Buffer.compare
 * costs more (100-150 ns) than the loop at these sizes, several times a frame.
 */

const SHORT_STRING = 16

const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

/** A string's UTF-8 size. */
export const utf8Length = (s: string): number => {
  if (s.length <= SHORT_STRING) {
    let i = 0
    while (i < s.length && s.charCodeAt(i) < 0x80) i++
    if (i === s.length) return i
  }
  return Buffer.byteLength(s)
}

/** Writes a string as UTF-8 at `at`; returns its size. */
export const writeUtf8 = (buf: Buffer, s: string, at: number): number => {
  if (s.length <= SHORT_STRING) {
    let i = 0
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i)
      if (c >= 0x80) break
      buf[at + i] = c
    }
    if (i === s.length) return i
  }
  return buf.write(s, at, "utf8")
}

/** The UTF-8 text from `start` to `end`; invalid UTF-8 throws a TypeError. */
export const readUtf8 = (buf: Buffer, start: number, end: number): string => {
  if (end - start <= SHORT_STRING) {
    let text = ""
    let i = start
    for (; i < end; i++) {
      const c = buf[i]!
      if (c >= 0x80) break
      text += String.fromCharCode(c)
    }
    if (i === end) return text
  }
  return strictUtf8.decode(buf.subarray(start, end))
}

/** Whether `a` and `b` hold the same bytes from `start` to `end`. */
export const sameBytes = (a: Buffer, b: Buffer, start: number, end: number): boolean => {
  for (let i = start; i < end; i++) if (a[i] !== b[i]) return false
  return true
}
