import { readFileSync } from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import fc from "fast-check"
import { type Bpacket, type BpacketField, bpacketLength, decodeBpacket, encodeBpacket } from "cluster-comm"

// 32 packets written by running Tcl members (../shared/tcl-cluster/vectors), kept here as data.
const vectors: ReadonlyArray<{ hex: string; transport: string; fields: ReadonlyArray<[number, BpacketField, unknown]> }> =
  readFileSync(new URL("../fixtures/bpacket-v2.jsonl", import.meta.url), "utf8").trim().split("\n").map((l) => JSON.parse(l))

const FAILURES = ["bpacket-truncated", "bpacket-unknown-field", "bpacket-oversize", "bpacket-invalid"]
const plain = (v: unknown) => (v instanceof Uint8Array ? new TextDecoder().decode(v) : v)

describe("bpacket v2 (the Tcl package's wire format)", () => {
  it("decodes every packet the Tcl members wrote to the fields listed, and encodes them back to the same bytes", () => {
    assert.lengthOf(vectors, 32)
    for (const v of vectors) {
      const bytes = Buffer.from(v.hex, "hex")
      const packet = decodeBpacket(bytes)
      assert.isObject(packet, `${v.hex}: ${String(packet)}`)
      const decoded = packet as Bpacket
      assert.sameMembers(Object.keys(decoded), v.fields.map(([, name]) => name))
      for (const [, name, value] of v.fields) {
        const got = plain(decoded[name])
        assert.deepStrictEqual(name === "keepalive" ? Number(got) : got, value, `${name} of ${v.hex}`)
      }
      const again = encodeBpacket(v.fields.map(([, name, value]) => [name, name === "keepalive" ? value === 1 : value] as never))
      assert.strictEqual(Buffer.from(again).toString("hex"), v.hex)
    }
  })

  it("a heartbeat, byte for byte", () => {
    const heartbeat = encodeBpacket([
      ["sid", "Z3Vpc754"],
      ["hid", "02:00:00:00:0a:01"],
      ["type", 1],
      ["channel", 0],
      ["protocols", ["t", "c"]],
      ["data", "t {port 42751}"],
      ["known", 0],
      ["tags", ["remote_v2"]]
    ])
    assert.strictEqual(Buffer.from(heartbeat).toString("hex"), vectors[0]!.hex)
  })

  it("finds packets back to back in a stream, and waits for the rest of a cut one", () => {
    const a = Buffer.from(vectors[0]!.hex, "hex")
    const b = Buffer.from(vectors[27]!.hex, "hex")
    const stream = Buffer.concat([a, b])
    assert.strictEqual(bpacketLength(stream, 1 << 20), a.length)
    assert.strictEqual(bpacketLength(stream.subarray(a.length), 1 << 20), b.length)
    for (let cut = 0; cut < a.length; cut++) assert.isUndefined(bpacketLength(a.subarray(0, cut), 1 << 20), `cut at ${cut}`)
    assert.strictEqual(bpacketLength(a, 10), "bpacket-oversize")
  })

  it("bad input is a named failure, never an exception", () => {
    const ok = Buffer.from(vectors[0]!.hex, "hex")
    const body = (fields: ReadonlyArray<number>) => Buffer.from([0xc0, 0x8d, fields.length, ...fields, 0, 0])
    const cases: ReadonlyArray<[Uint8Array, string]> = [
      [body([16, 0]), "bpacket-unknown-field"], // field id 16
      [body([1, 0x80, 0x80]), "bpacket-truncated"], // a varint cut short
      [body([1, 0xff, 0xff, 0xff, 0xff, 0x7f]), "bpacket-invalid"], // above a u32
      [body([10, 0x7f, 0x41]), "bpacket-truncated"], // a string longer than the packet
      [body([12, 0xc0, 0x8d, 0x01]), "bpacket-invalid"], // a list of 18,112 items in 3 bytes (and C0 8D inside a varint)
      [body([13]), "bpacket-truncated"], // a boolean with no byte
      [Buffer.concat([ok.subarray(0, ok.length - 2), Buffer.from([1, 1])]), "bpacket-invalid"], // no 00 00 trailer
      [Buffer.concat([ok, Buffer.from([0])]), "bpacket-invalid"], // bytes after the packet
      [ok.subarray(0, 20), "bpacket-truncated"],
      [Buffer.from([0xc0, 0x8d, 0xff, 0xff, 0xff, 0x0f]), "bpacket-oversize"] // LEN far above the limit
    ]
    for (const [bytes, reason] of cases) assert.strictEqual(decodeBpacket(bytes) as unknown, reason, Buffer.from(bytes).toString("hex"))
    // Strings that are not UTF-8 (the package writes what Tcl holds) are read as Latin-1, not refused.
    const latin = decodeBpacket(encodeBpacket([["sid", "abcdefgh"], ["tags", ["x"]]]).map((b) => (b === 0x78 ? 0xe9 : b)))
    assert.deepStrictEqual((latin as Bpacket).tags, ["é"])
    // A varint whose bytes contain C0 8D is read as LEB128 says (the package's own reader misreads it).
    const big = decodeBpacket(encodeBpacket([["data", "x".repeat(18112)]]), 1 << 20) as Bpacket
    assert.strictEqual(big.data?.length, 18112)
  })

  it("any encoded packet decodes to what was encoded (property)", () => {
    const name = fc.string({ minLength: 1, maxLength: 20 })
    fc.assert(
      fc.property(
        fc.record({
          type: fc.integer({ min: 0, max: 8 }),
          sid: name,
          hid: name,
          known: fc.nat(),
          tags: fc.array(name, { maxLength: 5 }),
          data: fc.string({ maxLength: 300 }),
          keepalive: fc.boolean(),
          filter: fc.array(name, { maxLength: 3 })
        }),
        (p) => {
          const decoded = decodeBpacket(encodeBpacket(Object.entries(p) as never)) as Bpacket
          assert.deepStrictEqual({ ...decoded, data: plain(decoded.data) } as unknown, p)
        }
      ),
      { numRuns: 500, seed: 7 }
    )
  })

  it("100,000 mutated, cut and random inputs: each a packet or a named failure (bounded fuzz)", () => {
    const seeds = vectors.map((v) => Buffer.from(v.hex, "hex"))
    let packets = 0
    const seen = new Set<string>()
    const check = (bytes: Uint8Array) => {
      const r = decodeBpacket(bytes)
      if (typeof r === "string") {
        assert.include(FAILURES, r as string)
        seen.add(r)
      } else packets++
    }
    fc.assert(
      fc.property(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(),
        (seed, edits, cut) => {
          const b = Buffer.from(seed)
          for (const [at, v] of edits) b[at % b.length] = v
          check(b)
          check(b.subarray(0, cut % b.length))
        }
      ),
      { numRuns: 25_000, seed: 11 }
    )
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (u) => {
      check(u)
      check(Buffer.concat([Buffer.from([0xc0, 0x8d]), u]))
    }), { numRuns: 25_000, seed: 12 })
    assert.isAbove(packets, 0)
    assert.sameMembers([...seen], FAILURES)
  })
})
