
import net from "node:net"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import fc from "fast-check"
import { readFileSync } from "node:fs"
import dgram from "node:dgram"
import { type Bpacket, decodeBpacket, encodeFrame, type Frame, type Message, type StatsSnapshot } from "cluster-comm"
import { eventually, member, rawMulticast, testCluster } from "../helpers.ts"

const where = { ...testCluster(12), heartbeat: "200 millis", ttl: "3 seconds" } as const

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void
const heapAfterGc = () => {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

const sender = { hostId: "0000000000ee", instance: "00000000000000ee", name: "fuzzer" }
const seed: ReadonlyArray<Frame> = [
  { _tag: "Message", sender, op: "C", channel: 0, targets: [], data: new Uint8Array([1, 2, 3]) },
  { _tag: "Heartbeat", sender, protocols: [{ protocol: "tcp", port: 1 }], tags: ["x"], version: 1 },
  { _tag: "Beat", sender, version: 1 },
  { _tag: "Query", sender, id: 1, op: "Q", channel: 0, targets: [], data: new Uint8Array(0) },
  { _tag: "Reply", sender, id: 1, ok: true, data: new Uint8Array(0) },
  { _tag: "Messages", sender, op: "B", channel: 0, items: [new Uint8Array([1]), new Uint8Array([2, 3])] }
]

/** 100,000 datagrams: random bytes, truncated frames and frames with random mutations. */
const junk = (count: number): Array<Buffer> => {
  const valid = seed.map((f) => encodeFrame(f))
  const mutated = fc.sample(
    fc.tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }))
      .map(([frame, edits]) => {
        const b = Buffer.from(frame)
        for (const [at, v] of edits) b[at % b.length] = v
        // Keep the sender away from the member's own id: mutations must not pass as its frames.
        return b
      }),
    { numRuns: count / 4, seed: 42 }
  )
  const random = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 300 }).map((u) => Buffer.from(u)), { numRuns: count / 4, seed: 43 })
  const truncated = Array.from({ length: count / 4 }, (_, i) => {
    const f = valid[i % valid.length]!
    return f.subarray(0, i % f.length)
  }).filter((b) => b.length > 0)
  const prefixed = fc.sample(
    fc.uint8Array({ maxLength: 200 }).map((u) => Buffer.concat([Buffer.from([0xcc, 1, 1 + (u[0] ?? 0) % 9, 0]), Buffer.from(u)])),
    { numRuns: count / 4, seed: 44 }
  )
  return [...mutated, ...random, ...truncated, ...prefixed]
}

/** A tcp stream to a member's port: the chunks written `pauseMs` apart, then closed (or closed by the member). */
const hostileStream = (port: number, chunks: ReadonlyArray<Buffer>, pauseMs: number) =>
  Effect.callback<void>((resume) => {
    const s = net.connect({ host: "127.0.0.1", port })
    s.on("error", () => {})
    s.on("close", () => resume(Effect.void))
    let i = 0
    const next = () => {
      if (i < chunks.length && !s.destroyed) {
        s.write(chunks[i++]!)
        setTimeout(next, pauseMs)
      } else s.destroy()
    }
    s.on("connect", next)
  })

/** The first two messages `victim` gets from `friend` (sent during the storm and after it), subscribed when this returns. */
const friendsMessages = (victim: { readonly messages: Stream.Stream<Message> }, friend: string) =>
  Effect.gen(function*() {
    const fiber = yield* victim.messages.pipe(
      Stream.filter((m) => m.from.name === friend),
      Stream.take(2),
      Stream.runCollect,
      Effect.forkChild
    )
    yield* Effect.sleep("20 millis")
    return fiber
  })

const decodeDrops = (s: StatsSnapshot) =>
  ["truncated", "bad-magic", "unknown-version", "unknown-kind", "invalid-field", "trailing-bytes"]
    .reduce((sum, r) => sum + (s.drops[r as keyof typeof s.drops] ?? 0), 0)

describe("hostile input (bounded fuzzing)", () => {
  it.live("100,000 malformed datagrams and hostile tcp streams: no crash, no growth, every drop counted, service goes on", () =>
    Effect.gen(function*() {
      const victim = yield* member({ name: "fuzz-victim", ...where, maxFrame: 64 * 1024 })
      const self = yield* victim.self
      const udpPort = self.protocols.find((p) => p.protocol === "udp")!.port
      const tcpPort = self.protocols.find((p) => p.protocol === "tcp")!.port
      const friend = yield* member({ name: "fuzz-friend", ...where })
      yield* eventually(friend.resolve("fuzz-victim"), (s) => s.length === 1)
      const delivered = yield* friendsMessages(victim, "fuzz-friend")
      const datagrams = junk(100_000) // made before measuring: the test's own bytes are not the member's
      const before = heapAfterGc()
      const inBefore = (yield* victim.stats).framesIn

      const socket = yield* rawMulticast
      // Half to the group, half to the member's own port, paced so the kernel keeps them all.
      for (let i = 0; i < datagrams.length; i++) {
        const [port, address] = i % 2 === 0 ? [where.port, where.address] : [udpPort, "127.0.0.1"]
        socket.send(datagrams[i]!, port, address)
        if (i % 50 === 49) yield* Effect.sleep("1 millis")
        // During the storm, normal traffic still flows.
        if (i === 50_000) yield* friend.sendTo("fuzz-victim", "C", "during")
      }

      // Hostile streams: oversize prefix, endless bytes with no frame boundary, slow drip of junk.
      const stream = (chunks: ReadonlyArray<Buffer>, pauseMs: number) => hostileStream(tcpPort, chunks, pauseMs)
      const huge = Buffer.alloc(8)
      huge.writeUInt32BE(0xffffffff, 0)
      yield* stream([huge], 1)
      yield* stream(Array.from({ length: 200 }, (_, i) => Buffer.alloc(1024, i)), 0) // no frame boundary, ever
      const drip = Buffer.concat(datagrams.slice(0, 30).map((d) => {
        const b = Buffer.alloc(4 + d.length)
        b.writeUInt32BE(d.length, 0)
        d.copy(b, 4)
        return b
      }))
      yield* stream(Array.from(drip.subarray(0, 300), (b) => Buffer.from([b])), 1)

      const stats = yield* eventually(victim.stats, (s) => s.framesIn - inBefore >= 99_000, "20 seconds")
      yield* friend.sendTo("fuzz-victim", "C", "after")
      const got = yield* Fiber.join(delivered).pipe(Effect.timeout("5 seconds"))
      assert.deepStrictEqual(got.map((m) => m.text), ["during", "after"])
      // Malformed input is dropped and counted by reason. (Mutations that still
      // make a valid frame are handled as one: a heartbeat of a "fuzzer" service,
      // a probe answered, a reply to no query counted as unexpected.)
      const drops = Object.values(stats.drops).reduce((a, b) => a + (b ?? 0), 0)
      assert.isAtLeast(decodeDrops(stats), 80_000)
      assert.isAtLeast(drops, 0.85 * (stats.framesIn - inBefore))
      assert.isAtLeast(stats.drops.oversize ?? 0, 2)
      const grown = heapAfterGc() - before
      console.log(`fuzz: ${stats.framesIn - inBefore} frames in, ${decodeDrops(stats)} decode drops, heap grew ${(grown / 1e6).toFixed(1)} MB`)
      assert.isBelow(grown, 20e6)
    }), 60_000)

  it.live("a member speaking the Tcl dialect: 100,000 malformed Tcl packets and hostile Tcl streams, every drop counted, service goes on", () =>
    Effect.gen(function*() {
      const at = { ...testCluster(21), heartbeat: "200 millis", ttl: "3 seconds" } as const
      // Its Tcl listener's port, from the heartbeat it multicasts in the Tcl dialect.
      const listening = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const s = dgram.createSocket({ type: "udp4", reuseAddr: true, reusePort: true })
          const heard: Array<Bpacket> = []
          s.on("message", (m) => {
            const p = decodeBpacket(m)
            if (typeof p !== "string") heard.push(p)
          })
          s.bind(at.port, at.address, () => s.addMembership(at.address, "127.0.0.1"))
          return { s, heard }
        }),
        ({ s }) => Effect.sync(() => s.close())
      )
      const victim = yield* member({ name: "tcl-victim", ...at, tcl: true, maxFrame: 64 * 1024 })
      const friend = yield* member({ name: "tcl-friend", ...at })
      yield* eventually(friend.resolve("tcl-victim"), (s) => s.length === 1)
      const props = yield* eventually(
        Effect.sync(() => listening.heard.find((p) => p.tags?.[0] === "tcl-victim" && p.data !== undefined)),
        (p) => p !== undefined
      )
      const tclPort = Number(/port (\d+)/.exec(new TextDecoder().decode(props!.data))![1])
      const delivered = yield* friendsMessages(victim, "tcl-friend")

      const vectors = readFileSync(new URL("../fixtures/bpacket-v2.jsonl", import.meta.url), "utf8").trim().split("\n")
        .map((l) => Buffer.from(JSON.parse(l).hex, "hex"))
      const mutated = fc.sample(
        fc.tuple(fc.constantFrom(...vectors), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.nat())
          .map(([v, edits, cut]) => {
            const b = Buffer.from(v)
            for (const [i, x] of edits) b[2 + (i % (b.length - 2))] = x // keep the magic: these reach the Tcl decoder
            return cut % 3 === 0 ? b.subarray(0, cut % b.length) : b
          }),
        { numRuns: 50_000, seed: 45 }
      )
      const random = fc.sample(fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.concat([Buffer.from([0xc0, 0x8d]), u])), { numRuns: 50_000, seed: 46 })
      const datagrams = [...mutated, ...random]
      const before = heapAfterGc()
      const inBefore = (yield* victim.stats).framesIn
      const socket = yield* rawMulticast
      for (let i = 0; i < datagrams.length; i++) {
        socket.send(datagrams[i]!, at.port, at.address)
        // Paced more than native frames: valid mutations become Tcl members to register.
        if (i % 20 === 19) yield* Effect.sleep("1 millis")
        if (i === 50_000) yield* friend.sendTo("tcl-victim", "C", "during")
      }
      // Hostile streams to its Tcl listener: a length far past maxFrame, bytes that are no packet, a slow drip.
      const stream = (chunks: ReadonlyArray<Buffer>, pauseMs: number) => hostileStream(tclPort, chunks, pauseMs)
      yield* stream([Buffer.from([0xc0, 0x8d, 0xff, 0xff, 0xff, 0x0f])], 1)
      yield* stream(Array.from({ length: 50 }, (_, i) => Buffer.alloc(1024, i)), 0)
      yield* stream(Array.from(Buffer.concat(datagrams.slice(0, 20)).subarray(0, 300), (b) => Buffer.from([b])), 1)

      const stats = yield* eventually(victim.stats, (s) => s.framesIn - inBefore >= 99_000, "20 seconds")
      yield* friend.sendTo("tcl-victim", "C", "after")
      const got = yield* Fiber.join(delivered).pipe(Effect.timeout("5 seconds"))
      assert.deepStrictEqual(got.map((m) => m.text), ["during", "after"])
      const bpacketDrops = ["bpacket-truncated", "bpacket-unknown-field", "bpacket-oversize", "bpacket-invalid", "tcl-unsupported"]
        .reduce((sum, r) => sum + (stats.drops[r as keyof typeof stats.drops] ?? 0), 0)
      assert.isAtLeast(bpacketDrops, 50_000)
      assert.isAtLeast(stats.drops["bpacket-oversize"] ?? 0, 1)
      const grown = heapAfterGc() - before
      console.log(`tcl fuzz: ${stats.framesIn - inBefore} packets in, ${bpacketDrops} dropped as not Tcl packets, heap grew ${(grown / 1e6).toFixed(1)} MB`)
      assert.isBelow(grown, 30e6)
    }), 60_000)
})
