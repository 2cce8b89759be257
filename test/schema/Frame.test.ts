import { assert, describe, it } from "@effect/vitest"
import { Effect, Result, Schema } from "effect"
import fc from "fast-check"
import { decodeFrame, encodeFrame, type Frame, frameSize } from "cluster-comm"
import { FrameFromBytes } from "cluster-comm/schema"

const hex = (bytes: number) => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map((b) => Buffer.from(b).toString("hex"))
const utf8Within = (maxBytes: number) =>
  fc.string({ unit: "grapheme", minLength: 1, maxLength: maxBytes }).filter((s) => {
    const n = Buffer.byteLength(s)
    return n >= 1 && n <= maxBytes
  })
const sender = fc.record({ hostId: hex(6), instance: hex(8), name: utf8Within(48) })
const protocols = fc.array(
  fc.record({ protocol: fc.constantFrom("tcp" as const, "udp" as const), port: fc.integer({ min: 0, max: 65535 }) }),
  { maxLength: 8 }
)
const tags = fc.array(utf8Within(64), { maxLength: 32 })
const beacon = fc.record({
  _tag: fc.constantFrom("Heartbeat" as const, "Probe" as const, "Answer" as const),
  sender,
  protocols,
  tags,
  version: fc.integer({ min: 0, max: 65535 })
})
const leave = fc.record({ _tag: fc.constant("Leave" as const), sender })
const message = fc.record({
  _tag: fc.constant("Message" as const),
  sender,
  op: utf8Within(32),
  channel: fc.integer({ min: 0, max: 65535 }),
  targets: fc.array(fc.tuple(hex(6), utf8Within(48)).map(([h, n]) => `${h}@${n}`), { maxLength: 32 }),
  data: fc.uint8Array({ maxLength: 2048 })
})
const query = fc.record({
  _tag: fc.constant("Query" as const),
  sender,
  id: fc.integer({ min: 0, max: 0xffffffff }),
  op: utf8Within(32),
  channel: fc.integer({ min: 0, max: 65535 }),
  targets: fc.array(fc.tuple(hex(6), utf8Within(48)).map(([h, n]) => `${h}@${n}`), { maxLength: 32 }),
  data: fc.uint8Array({ maxLength: 2048 })
})
const reply = fc.record({
  _tag: fc.constant("Reply" as const),
  sender,
  id: fc.integer({ min: 0, max: 0xffffffff }),
  ok: fc.boolean(),
  data: fc.uint8Array({ maxLength: 2048 })
})
const ping = fc.record({
  _tag: fc.constant("Ping" as const),
  sender,
  target: fc.tuple(hex(6), utf8Within(48)).map(([h, n]) => `${h}@${n}`)
})
const repair = fc.record({
  _tag: fc.constant("Repair" as const),
  sender,
  protocols: fc.array(fc.constantFrom("tcp", "udp", "unix"), { maxLength: 8 })
})
const beat = fc.record({
  _tag: fc.constant("Beat" as const),
  sender: fc.record({ hostId: hex(6), instance: hex(8), name: fc.constant("") }),
  version: fc.integer({ min: 0, max: 65535 })
})
const batch = fc.record({
  _tag: fc.constant("Messages" as const),
  sender,
  op: utf8Within(32),
  channel: fc.integer({ min: 0, max: 65535 }),
  items: fc.array(fc.uint8Array({ maxLength: 512 }), { minLength: 1, maxLength: 40 })
})
const peers = fc.record({
  _tag: fc.constant("Peers" as const),
  sender,
  endpoints: fc.array(
    fc.record({
      address: fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join(".")),
      port: fc.integer({ min: 1, max: 65535 })
    }),
    { maxLength: 64 }
  )
})
const frame: fc.Arbitrary<Frame> = fc.oneof(beacon, leave, message, query, reply, ping, repair, beat, batch, peers)

const normalize = (f: Frame) =>
  "data" in f ? { ...f, data: Array.from(f.data) } : "items" in f ? { ...f, items: f.items.map((i) => Array.from(i)) } : f

const sample: Frame = {
  _tag: "Message",
  sender: { hostId: "0242ac110002", instance: "0123456789abcdef", name: "service_one" },
  op: "C",
  channel: 0,
  targets: ["0242ac110003@service_two"],
  data: new TextEncoder().encode("Hello")
}
const heartbeat: Frame = {
  _tag: "Heartbeat",
  sender: sample.sender,
  protocols: [{ protocol: "tcp", port: 40001 }, { protocol: "udp", port: 40002 }],
  tags: [],
  version: 1
}

describe("frame codec", () => {
  it("round-trips every frame kind (property)", () => {
    fc.assert(
      fc.property(frame, (f) => {
        const bytes = encodeFrame(f)
        assert.strictEqual(bytes.length, frameSize(f))
        assert.deepStrictEqual(normalize(decodeFrame(bytes) as Frame), normalize(f))
      }),
      { numRuns: 2000 }
    )
  })

  it("round-trips ops, names, targets and tags in every UTF-8 width, short and long", () => {
    // Short ASCII strings (ops, names, targets, tags) are measured, written and read without
    // Node's UTF-8 codec; these cross that path's edges: the first byte over 0x7f, and past 16 characters.
    const texts = ["R", "é", "aé", "漢字", "op😀", "abcdefghijklmnop", "abcdefghijklmnopq", "abcdefghijklmnoé", "ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ"]
    for (const text of texts) {
      for (const f of [
        { ...sample, op: text, sender: { ...sample.sender, name: text } },
        { _tag: "Query", sender: { ...sample.sender, name: text }, id: 1, op: text, channel: 2, targets: [], data: new Uint8Array([1]) },
        { _tag: "Messages", sender: sample.sender, op: text, channel: 0, items: [new Uint8Array([1])] },
        { ...sample, targets: [`0242ac110003@${text}`] },
        { _tag: "Ping", sender: sample.sender, target: `0242ac110003@${text}` },
        { ...heartbeat, tags: [text, "web"] }
      ] as Array<Frame>) {
        const bytes = encodeFrame(f)
        assert.strictEqual(bytes.length, frameSize(f), text)
        assert.deepStrictEqual(normalize(decodeFrame(bytes) as Frame), normalize(f), text)
      }
    }
  })

  it("leaves headroom untouched and encodes after it", () => {
    const bytes = encodeFrame(sample, 4)
    assert.deepStrictEqual(normalize(decodeFrame(bytes.subarray(4)) as Frame), normalize(sample))
  })

  it("keeps a heartbeat within 96 bytes even with the longest name and eight protocols", () => {
    const longest: Frame = {
      _tag: "Heartbeat",
      sender: { ...sample.sender, name: "n".repeat(48) },
      protocols: Array.from({ length: 8 }, () => ({ protocol: "tcp" as const, port: 65535 })),
      tags: [],
      version: 65535
    }
    assert.isAtMost(encodeFrame(longest).length, 96)
    assert.strictEqual(encodeFrame(heartbeat).length, 19 + 11 + 1 + 6 + 1 + 2)
    // Tags add a length byte and their UTF-8 bytes each.
    assert.strictEqual(encodeFrame({ ...heartbeat, tags: ["web", "eu"] } as Frame).length, 40 + 4 + 3)
    // The periodic beat is 20 bytes, whatever the name.
    assert.strictEqual(encodeFrame({ _tag: "Beat", sender: longest.sender, version: 9 }).length, 20)
  })

  it("says why each malformed frame is not one", () => {
    const good = encodeFrame(sample)
    const patched = (at: number, value: number) => {
      const b = Buffer.from(good)
      b[at] = value
      return b
    }
    assert.strictEqual(decodeFrame(new Uint8Array(0)), "truncated")
    assert.strictEqual(decodeFrame(patched(0, 0x7b)), "bad-magic")
    assert.strictEqual(decodeFrame(patched(1, 2)), "unknown-version")
    assert.strictEqual(decodeFrame(patched(2, 99)), "unknown-kind")
    const replyBytes = encodeFrame({ _tag: "Reply", sender: sample.sender, id: 7, ok: true, data: new Uint8Array(0) })
    const badStatus = Buffer.from(replyBytes)
    badStatus[replyBytes.length - 1] = 2
    assert.strictEqual(decodeFrame(badStatus), "invalid-field")
    assert.strictEqual(decodeFrame(replyBytes.subarray(0, replyBytes.length - 1)), "truncated")
    // A batch: its count must be 1..65535 and match what follows, to the last byte.
    const batchBytes = encodeFrame({ _tag: "Messages", sender: sample.sender, op: "T", channel: 0, items: [new Uint8Array([1, 2])] })
    const countAt = 19 + 11 + 2 + 2
    const withCount = (n: number) => {
      const b = Buffer.from(batchBytes)
      b.writeUInt32BE(n, countAt)
      return b
    }
    assert.strictEqual(decodeFrame(withCount(0)), "invalid-field")
    assert.strictEqual(decodeFrame(withCount(70_000)), "invalid-field")
    assert.strictEqual(decodeFrame(withCount(60_000)), "truncated")
    assert.strictEqual(decodeFrame(Buffer.concat([batchBytes, Buffer.from([0])])), "trailing-bytes")
    assert.strictEqual(decodeFrame(batchBytes.subarray(0, batchBytes.length - 1)), "truncated")
    assert.strictEqual(decodeFrame(patched(18, 0)), "invalid-field") // empty name
    assert.strictEqual(decodeFrame(patched(18, 200)), "invalid-field") // name over 48 bytes
    const badUtf8 = patched(19, 0xff)
    assert.strictEqual(decodeFrame(badUtf8), "invalid-field")
    // So is one after an ASCII start (a short string is read without the decoder until a byte above 0x7f).
    assert.strictEqual(decodeFrame(patched(25, 0xff)), "invalid-field")
    assert.strictEqual(decodeFrame(patched(29, 0xc3)), "invalid-field") // a lead byte, its continuation missing
    const hb = encodeFrame(heartbeat)
    assert.strictEqual(decodeFrame(Buffer.concat([hb, Buffer.from([0])])), "trailing-bytes")
    const manyTags = Buffer.from(hb)
    manyTags[hb.length - 3] = 33
    assert.strictEqual(decodeFrame(manyTags), "invalid-field")
    assert.strictEqual(decodeFrame(Buffer.concat([manyTags.subarray(0, hb.length - 3), Buffer.from([1, 0])])), "invalid-field") // empty tag
    const beatBytes = encodeFrame({ _tag: "Beat", sender: sample.sender, version: 3 })
    assert.strictEqual(decodeFrame(beatBytes.subarray(0, 19)), "truncated")
    assert.strictEqual(decodeFrame(Buffer.concat([beatBytes, Buffer.from([0])])), "trailing-bytes")
    const manyProtocols = Buffer.from(hb)
    manyProtocols[19 + 11] = 9
    assert.strictEqual(decodeFrame(manyProtocols), "invalid-field")
    const leaveBytes = encodeFrame({ _tag: "Leave", sender: sample.sender })
    assert.strictEqual(decodeFrame(Buffer.concat([leaveBytes, Buffer.from([1])])), "trailing-bytes")
  })

  it("reports every truncation of a valid frame as truncated, never throws", () => {
    for (const f of [sample, heartbeat]) {
      const bytes = encodeFrame(f)
      // A message's data runs to the end, so only cuts inside its header are errors.
      const headerEnd = f._tag === "Message" ? bytes.length - f.data.length : bytes.length
      for (let cut = 0; cut < headerEnd; cut++) {
        const r = decodeFrame(bytes.subarray(0, cut))
        assert.strictEqual(r, "truncated", `cut at ${cut}`)
      }
    }
  })

  it("turns any bytes into a frame or a reason (property)", () => {
    const prefixed = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([Buffer.from([0xcc, 1]), b]))
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), prefixed), (bytes) => {
        const r = decodeFrame(bytes)
        assert.isTrue(typeof r === "string" || typeof r === "object")
      }),
      { numRuns: 20000 }
    )
  })

  it("mutated valid frames decode or fail with a reason (property)", () => {
    fc.assert(
      fc.property(frame, fc.nat(), fc.integer({ min: 0, max: 255 }), (f, where, value) => {
        const bytes = Buffer.from(encodeFrame(f))
        bytes[where % bytes.length] = value
        const r = decodeFrame(bytes)
        assert.isTrue(typeof r === "string" || typeof r === "object")
      }),
      { numRuns: 5000 }
    )
  })

  it.effect("exposes the codec as a Schema: bad bytes are a typed decode failure", () =>
    Effect.gen(function*() {
      const decoded = yield* Schema.decodeUnknownEffect(FrameFromBytes)(new Uint8Array(encodeFrame(heartbeat)))
      assert.deepStrictEqual(decoded, heartbeat)
      const bad = Schema.decodeUnknownResult(FrameFromBytes)(new Uint8Array([0xcc, 7, 1, 0]))
      assert.isTrue(Result.isFailure(bad))
      if (Result.isFailure(bad)) assert.include(bad.failure.message, "unknown-version")
      const encoded = yield* Schema.encodeEffect(FrameFromBytes)(heartbeat)
      assert.deepStrictEqual(Array.from(encoded), Array.from(encodeFrame(heartbeat)))
      const tooLongOp = Schema.encodeResult(FrameFromBytes)({ ...sample, op: "x".repeat(33) } as Frame)
      assert.isTrue(Result.isFailure(tooLongOp))
    }))
})
