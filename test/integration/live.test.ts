import { readFileSync } from "node:fs"
import dgram from "node:dgram"
import net from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { type Cluster, decodeFrame, encodeFrame, type Frame, HookPoint, HookRejected, type JoinError, type Service } from "cluster-comm"
import { collect, eventually, leavable, member, rawMulticast, testCluster } from "../helpers.ts"

// Real sockets, one process, host-only (remote 0): loopback multicast, TTL 0.
const net1 = testCluster(1)
const fast = { ...net1, heartbeat: "100 millis", ttl: "1 second" } as const
// Beacons so rare that only probes, answers and leaves can explain what a test sees.
const quiet = { ...net1, heartbeat: "30 seconds", ttl: "60 seconds" } as const

const knowsAll = (all: ReadonlyArray<string>, self: string) => (services: ReadonlyArray<Service>) =>
  all.filter((n) => n !== self).every((n) => services.some((s) => s.name === n))

/** `from` opens its connection to the member named `name` with a message, which arrives: `to` may then answer on it. */
const opened = (from: Cluster["Service"], to: Cluster["Service"], name: string) =>
  Effect.gen(function*() {
    const [target] = yield* eventually(from.resolve(name), (s) => s.length === 1)
    const got = yield* collect(to, 1)
    yield* from.sendTo(target!, "C", "hello")
    yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
  })

describe("members on real sockets (one host)", () => {
  it.live("share the multicast port and all hear each other", () =>
    Effect.gen(function*() {
      const all = ["s1", "s2", "s3"]
      const members = yield* Effect.forEach(all, (name) => member({ name, ...fast }))
      for (const [i, m] of members.entries()) {
        yield* eventually(m.services, knowsAll(all, all[i]!))
      }
      const ips = yield* members[0]!.ips
      assert.deepStrictEqual(ips, ["127.0.0.1"])
      const self = yield* members[0]!.self
      assert.match(self.id, /^[0-9a-f]{12}@s1$/)
      const seen = (yield* members[1]!.services).find((s) => s.name === "s1")!
      assert.strictEqual(seen.id, self.id)
      assert.isTrue(seen.local)
      assert.deepStrictEqual(seen.protocols.map((p) => p.protocol), ["tcp", "udp"])
    }))

  it.live("a joiner knows a running cluster from the probe answers, without waiting for a heartbeat", () =>
    Effect.gen(function*() {
      const running = ["q1", "q2", "q3"]
      const members = yield* Effect.forEach(running, (name) => member({ name, ...quiet }))
      // They know each other through the later joiners' probes.
      yield* eventually(members[0]!.services, knowsAll(running, "q1"), "2 seconds")
      const joiner = yield* member({ name: "q4", ...quiet })
      // Heartbeats come every 30 s: knowing all within 2 s means the probe was answered.
      yield* eventually(joiner.services, knowsAll(running, "q4"), "2 seconds")
      // And they know the joiner from its probe.
      yield* eventually(members[0]!.services, (s) => s.some((x) => x.name === "q4"), "2 seconds")
    }))

  it.live("clusters on other groups or ports never see each other", () =>
    Effect.gen(function*() {
      const other = testCluster(2)
      const groups = {
        home: { ...net1 },
        otherGroup: { port: net1.port, address: other.address },
        otherPort: { port: other.port, address: net1.address }
      }
      const members: Record<string, Array<{ readonly services: Effect.Effect<ReadonlyArray<Service>> }>> = {}
      for (const [label, where] of Object.entries(groups)) {
        members[label] = yield* Effect.forEach(["a", "b"], (n) =>
          member({ name: `${label}-${n}`, ...where, heartbeat: "50 millis", ttl: "1 second" }))
      }
      // Each pair finds its partner (so discovery works here) ...
      for (const [label, pair] of Object.entries(members)) {
        yield* eventually(pair[0]!.services, (s) => s.some((x) => x.name === `${label}-b`))
      }
      // ... and after many more heartbeats, still nobody from the others.
      yield* Effect.sleep("400 millis")
      for (const [label, pair] of Object.entries(members)) {
        for (const m of pair) {
          const foreign = (yield* m.services).filter((s) => !s.name.startsWith(`${label}-`))
          assert.deepStrictEqual(foreign.map((s) => s.name), [], label)
        }
      }
    }))

  it.live("joins the group on loopback only (no IGMP report can leave the host)", () =>
    Effect.gen(function*() {
      yield* member({ name: "igmp", ...net1 })
      // /proc/net/igmp lists each device, then its groups as little-endian hex.
      const groupHex = net1.address.split(".").reverse().map((o) => Number(o).toString(16).padStart(2, "0")).join("").toUpperCase()
      const devices = new Map<string, Array<string>>()
      let current = ""
      for (const line of readFileSync("/proc/net/igmp", "utf8").split("\n").slice(1)) {
        const device = /^\d+\s+(\S+)/.exec(line)
        if (device) {
          current = device[1]!
          devices.set(current, [])
        } else if (line.trim()) devices.get(current)?.push(line.trim().split(/\s+/)[0]!)
      }
      const joinedOn = [...devices].filter(([, groups]) => groups.includes(groupHex)).map(([d]) => d)
      assert.deepStrictEqual(joinedOn, ["lo"])
    }))

  it.live("members of one process share one group socket, closed with the last of them", () =>
    Effect.gen(function*() {
      const own = testCluster(18)
      const at = { ...own, heartbeat: "100 millis", ttl: "1 second" } as const
      // /proc/net/udp names a socket's local address as little-endian hex ip:port.
      const local = `${own.address.split(".").reverse().map((o) => Number(o).toString(16).padStart(2, "0")).join("")}:${own.port.toString(16).padStart(4, "0")}`.toUpperCase()
      const groupSockets = () => readFileSync("/proc/net/udp", "utf8").split("\n").filter((l) => l.trim().split(/\s+/)[1] === local).length
      const all = ["g1", "g2", "g3"]
      const members = yield* Effect.forEach(all, (name) => leavable({ name, ...at }))
      assert.strictEqual(groupSockets(), 1)
      // The first to join leaves: the others still hear each other on the shared socket.
      yield* members[0]!.leave
      assert.strictEqual(groupSockets(), 1)
      const late = yield* leavable({ name: "g4", ...at })
      yield* eventually(late.cluster.services, knowsAll(["g2", "g3", "g4"], "g4"))
      yield* eventually(members[1]!.cluster.services, knowsAll(["g2", "g3", "g4"], "g2"))
      const atG3 = yield* collect(members[2]!.cluster, 1)
      yield* late.cluster.broadcast("hi", "from g4")
      const [got] = yield* Fiber.join(atG3)
      assert.strictEqual(got!.from.name, "g4")
      for (const m of [members[1]!, members[2]!, late]) yield* m.leave
      assert.strictEqual(groupSockets(), 0)
      // The last member leaving while another joins: the joiner still gets a working socket.
      const last = yield* leavable({ name: "g5", ...at })
      const [, next] = yield* Effect.all([last.leave, leavable({ name: "g6", ...at })], { concurrency: "unbounded" })
      const other = yield* leavable({ name: "g7", ...at })
      yield* eventually(next.cluster.services, knowsAll(["g6", "g7"], "g6"))
      assert.strictEqual(groupSockets(), 1)
      yield* next.leave
      yield* other.leave
      assert.strictEqual(groupSockets(), 0)
    }))

  it.live("a beat at the descriptor version known refreshes its sender; at another, the member asks that sender for its descriptor", () =>
    Effect.gen(function*() {
      const watcher = yield* member({ name: "watcher", ...quiet })
      // A service of our own making, on a plain socket that sees only what is sent to it.
      const raw = yield* rawMulticast
      const port = (raw.address() as net.AddressInfo).port
      const probes: Array<Frame> = []
      raw.on("message", (bytes) => {
        const frame = decodeFrame(bytes)
        if (typeof frame !== "string" && frame._tag === "Probe") probes.push(frame)
      })
      const send = (frame: Frame) =>
        Effect.callback<void>((resume) => {
          raw.send(encodeFrame(frame), net1.port, net1.address, () => resume(Effect.void))
        })
      const ghost = { hostId: "0000000000dd", instance: "00000000000000dd", name: "ghost" }
      yield* send({ _tag: "Heartbeat", sender: ghost, protocols: [{ protocol: "udp", port }], tags: [], version: 1 })
      yield* eventually(watcher.services, (s) => s.some((x) => x.name === "ghost"))
      yield* send({ _tag: "Beat", sender: { ...ghost, name: "" }, version: 1 })
      yield* Effect.sleep("200 millis")
      assert.strictEqual(probes.length, 0, "a beat at the known version asks nothing")
      yield* send({ _tag: "Beat", sender: { ...ghost, name: "" }, version: 2 })
      yield* eventually(Effect.sync(() => probes.length), (n) => n >= 1)
      assert.strictEqual(probes[0]!.sender.name, "watcher")

      // A descriptor at a new version with the same details (a change and its
      // undo in between) is taken as that version: its beats ask nothing.
      const twin = { hostId: "0000000000dd", instance: "00000000000000ee", name: "twin" }
      const twinAt = (version: number): Frame => ({ _tag: "Heartbeat", sender: twin, protocols: [{ protocol: "udp", port }], tags: [], version })
      yield* send(twinAt(1))
      yield* eventually(watcher.services, (s) => s.some((x) => x.name === "twin"))
      yield* send(twinAt(3))
      yield* Effect.sleep("100 millis")
      yield* send({ _tag: "Beat", sender: { ...twin, name: "" }, version: 3 })
      yield* Effect.sleep("200 millis")
      assert.strictEqual(probes.length, 1, "no probe for the twin's beat")
    }))

  it.live("tags go out in a heartbeat as soon as they change", () =>
    Effect.gen(function*() {
      const tagged = yield* member({ name: "tagged", ...quiet, tags: ["blue"] })
      const watcher = yield* member({ name: "tag-watcher", ...quiet })
      const [seen] = yield* eventually(watcher.resolve("tagged"), (s) => s.length === 1)
      assert.deepStrictEqual(seen!.tags, ["blue"])
      yield* tagged.updateTags({ mappend: ["blue", "green"] })
      // Heartbeats come every 30 s: only the change's own heartbeat explains this.
      yield* eventually(watcher.resolve("green"), (s) => s.length === 1, "2 seconds")
      assert.deepStrictEqual(yield* watcher.resolve("blue"), [])
    }))

  it.live("channels: only members on a channel accept its messages", () =>
    Effect.gen(function*() {
      const on = yield* member({ name: "ch-on", ...fast, channels: [7] })
      const off = yield* member({ name: "ch-off", ...fast })
      const tx = yield* member({ name: "ch-tx", ...fast })
      yield* eventually(tx.services, (s) => s.length === 2)
      const atOn = yield* collect(on, 3)
      const atOff = yield* collect(off, 1)
      yield* tx.broadcast("C", "seven", { channel: 7 })
      yield* tx.sendTo("ch-on", "C", "seven direct", { channel: 7 })
      yield* tx.broadcast("C", "zero")
      assert.sameMembers((yield* Fiber.join(atOn).pipe(Effect.timeout("3 seconds"))).map((m) => `${m.text}/${m.channel}`), ["seven/7", "seven direct/7", "zero/0"])
      assert.deepStrictEqual((yield* Fiber.join(atOff).pipe(Effect.timeout("3 seconds"))).map((m) => m.text), ["zero"])
      assert.strictEqual((yield* off.stats).drops.channel, 1)
    }))

  it.live("sendAll streams many messages to one service, in order", () =>
    Effect.gen(function*() {
      const rx = yield* member({ name: "all-rx", ...fast })
      const tx = yield* member({ name: "all-tx", ...fast })
      const [target] = yield* eventually(tx.resolve("all-rx"), (s) => s.length === 1)
      const count = 10_000
      const got = yield* collect(rx, count)
      const sent = yield* tx.sendAll(target!, "S", Array.from({ length: count }, (_, i) => `n${i}`))
      assert.strictEqual(sent, count)
      const messages = yield* Fiber.join(got).pipe(Effect.timeout("10 seconds"))
      assert.isTrue(messages.every((m, i) => m.text === `n${i}` && m.protocol === "tcp"))
      // Carried in batch frames: far fewer frames than messages, every message counted.
      const stats = yield* rx.stats
      assert.strictEqual(stats.byOp.S?.in, count)
      assert.isBelow(stats.byProtocol.tcp!.in, count / 100)
    }))

  it.live("sendAll's batches still pass every message through the send and receive hooks", () =>
    Effect.gen(function*() {
      const rx = yield* member({ name: "hooked-rx", ...fast })
      const tx = yield* member({ name: "hooked-tx", ...fast })
      const [target] = yield* eventually(tx.resolve("hooked-rx"), (s) => s.length === 1)
      // The receiver refuses odd numbers; the sender upper-cases what it sends once its hook is in.
      yield* rx.hook(HookPoint.op("S", "receive"), (m) =>
        Number(m.text.slice(1)) % 2 === 1 ? Effect.fail(new HookRejected({ point: "test", reason: "odd" })) : Effect.succeed(m))
      const got = yield* collect(rx, 50)
      assert.strictEqual(yield* tx.sendAll(target!, "S", Array.from({ length: 100 }, (_, i) => `n${i}`)), 100)
      assert.deepStrictEqual((yield* Fiber.join(got).pipe(Effect.timeout("5 seconds"))).map((m) => m.text), Array.from({ length: 50 }, (_, i) => `n${2 * i}`))
      yield* eventually(rx.stats, (s) => s.drops["hook-rejected"] === 50)
      yield* tx.hook(HookPoint.op("S", "send"), (o) => Effect.succeed({ ...o, data: new TextEncoder().encode(new TextDecoder().decode(o.data).toUpperCase()) }))
      const again = yield* collect(rx, 2)
      yield* tx.sendAll(target!, "S", ["n2", "n3", "n4"])
      assert.deepStrictEqual((yield* Fiber.join(again).pipe(Effect.timeout("5 seconds"))).map((m) => m.text), ["N2", "N4"])
    }))

  it.live("messages sent just before leaving still arrive", () =>
    Effect.gen(function*() {
      const rx = yield* member({ name: "last-rx", ...fast })
      const tx = yield* leavable({ name: "last-tx", ...fast })
      const [target] = yield* eventually(tx.cluster.resolve("last-rx"), (s) => s.length === 1)
      const got = yield* collect(rx, 100)
      for (let i = 0; i < 100; i++) yield* tx.cluster.sendTo(target!, "C", `last ${i}`)
      yield* tx.leave // at once: the connection must flush before it closes
      const messages = yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
      assert.deepStrictEqual(messages.map((m) => m.text), Array.from({ length: 100 }, (_, i) => `last ${i}`))
    }))

  it.live("a leave drops the member at once, long before its ttl", () =>
    Effect.gen(function*() {
      const stay = yield* member({ name: "stay", ...quiet })
      const go = yield* leavable({ name: "go", ...quiet })
      yield* eventually(stay.services, (s) => s.some((x) => x.name === "go"))
      const lost = yield* stay.events.pipe(
        Stream.filter((e) => e._tag === "ServiceLost"),
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Effect.sleep("20 millis")
      yield* go.leave
      const [event] = yield* Fiber.join(lost).pipe(Effect.timeout("2 seconds"))
      assert.deepStrictEqual(event?._tag === "ServiceLost" && [event.service.name, event.why], ["go", "left"])
      assert.deepStrictEqual(yield* stay.services, [])
    }))

  it.live("heartbeats keep a member known well past its ttl", () =>
    Effect.gen(function*() {
      const config = { ...net1, heartbeat: "100 millis", ttl: "400 millis" } as const
      const a = yield* member({ name: "beat-a", ...config })
      yield* member({ name: "beat-b", ...config })
      yield* eventually(a.services, (s) => s.some((x) => x.name === "beat-b"))
      const lost = yield* a.events.pipe(
        Stream.filter((e) => e._tag === "ServiceLost"),
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Effect.sleep("1200 millis") // three ttls
      assert.isUndefined(lost.pollUnsafe())
      assert.isTrue((yield* a.services).some((x) => x.name === "beat-b"))
    }))

  it.live("a port held without sharing, or a taken tcp port, is a JoinError AddressInUse", () =>
    Effect.gen(function*() {
      const other = testCluster(5)
      // A program that binds the port without SO_REUSEADDR/SO_REUSEPORT.
      const hog = yield* Effect.acquireRelease(
        Effect.callback<dgram.Socket>((resume) => {
          const s = dgram.createSocket({ type: "udp4" })
          s.bind(other.port, "0.0.0.0", () => resume(Effect.succeed(s)))
        }),
        (s) => Effect.sync(() => s.close())
      )
      void hog
      const udpError = yield* Effect.flip(member({ name: "blocked", ...other }))
      assert.deepStrictEqual([(udpError as JoinError)._tag, (udpError as JoinError).reason], ["JoinError", "AddressInUse"])
      const first = yield* member({ name: "tcp-first", ...net1 })
      const port = (yield* first.self).protocols.find((p) => p.protocol === "tcp")!.port
      const tcpError = yield* Effect.flip(member({ name: "tcp-second", ...net1, tcpPort: port }))
      assert.deepStrictEqual([(tcpError as JoinError).reason, (tcpError as JoinError).field], ["AddressInUse", "tcpPort"])
      // An interface that does not exist fails before any socket is opened.
      const noIf = yield* Effect.flip(member({ name: "no-if", ...other, remote: 1, interface: "no-such-if0" }))
      assert.deepStrictEqual([(noIf as JoinError).reason, (noIf as JoinError).field], ["NoInterface", "interface"])
    }))

  it.live("a member unheard for the ttl expires", () =>
    Effect.gen(function*() {
      const watcher = yield* member({ name: "watcher", ...net1, heartbeat: "100 millis", ttl: "500 millis" })
      const events = yield* watcher.events.pipe(Stream.take(2), Stream.runCollect, Effect.forkChild)
      yield* Effect.sleep("20 millis")
      yield* member({ name: "silent", ...quiet })
      const [found, lost] = yield* Fiber.join(events).pipe(Effect.timeout("3 seconds"))
      assert.strictEqual(found?._tag, "ServiceFound")
      assert.deepStrictEqual(lost?._tag === "ServiceLost" && [lost.service.name, lost.why], ["silent", "expired"])
    }))

  it.live("broadcast reaches every member; sendTo only its target, by tcp over one reused connection", () =>
    Effect.gen(function*() {
      const all = ["b1", "b2", "b3"]
      const [one, two, three] = yield* Effect.forEach(all, (name) => member({ name, ...fast }))
      yield* eventually(three!.services, knowsAll(all, "b3"))
      const atOne = yield* collect(one!, 13)
      const atTwo = yield* collect(two!, 2)
      yield* three!.broadcast("C", "Hello, Foo!")
      const [target] = yield* three!.resolve("b1")
      for (let i = 0; i < 10; i++) {
        const [d] = yield* three!.sendTo(target!, "C", `Hello, Bar! ${i}`)
        assert.strictEqual(d?.protocol, "tcp")
      }
      // By name as well as by service value.
      yield* three!.sendTo("b1", "D", "by name")
      yield* three!.broadcast("C", "last")
      const gotOne = yield* Fiber.join(atOne).pipe(Effect.timeout("3 seconds"))
      const gotTwo = yield* Fiber.join(atTwo).pipe(Effect.timeout("3 seconds"))
      const direct = gotOne.filter((m) => m.protocol === "tcp").map((m) => m.text)
      assert.deepStrictEqual(direct, [...Array.from({ length: 10 }, (_, i) => `Hello, Bar! ${i}`), "by name"])
      assert.strictEqual(gotOne.find((m) => m.op === "D")?.from.name, "b3")
      // two got the broadcasts and nothing in between.
      assert.deepStrictEqual(gotTwo.map((m) => `${m.text} ${m.protocol}`), ["Hello, Foo! udp", "last udp"])
      assert.strictEqual((yield* one!.stats).connectionsAccepted, 1)
      assert.strictEqual((yield* three!.stats).connectionsOpened, 1)
    }))

  it.live("two members talk both ways over the tcp connection the first opened; once it closes, the other opens its own", () =>
    Effect.gen(function*() {
      const config = { ...fast, protocols: ["tcp"], idleTimeout: "400 millis" } as const
      const a = yield* member({ name: "way-a", ...config })
      const b = yield* member({ name: "way-b", ...config })
      const [toB] = yield* eventually(a.resolve("way-b"), (s) => s.length === 1)
      const [toA] = yield* eventually(b.resolve("way-a"), (s) => s.length === 1)
      yield* b.hook(HookPoint.query("Q"), (q) => Effect.succeed(`${q.text}!`))
      const atB = yield* collect(b, 1)
      yield* a.sendTo(toB!, "C", "hello")
      yield* Fiber.join(atB).pipe(Effect.timeout("3 seconds"))
      // b answers on a's connection: a message, and a query's reply.
      const atA = yield* collect(a, 1)
      const [sent] = yield* b.sendTo(toA!, "C", "back")
      assert.strictEqual(sent?.protocol, "tcp")
      const result = yield* a.queryAll({ target: toB!, op: "Q", data: "q" })
      assert.deepStrictEqual([...result.responses.values()].map((r) => r.text), ["q!"])
      const back = yield* Fiber.join(atA).pipe(Effect.timeout("3 seconds"))
      assert.deepStrictEqual(back.map((m) => `${m.text} ${m.protocol}`), ["back tcp"])
      // Read on a's own connection, a kept message holds at most a 1 KiB slab (Stream.ts), not a shared pool's 8 KiB.
      assert.isAtMost(back[0]!.data.buffer.byteLength, 1024)
      // Reads of many sizes, in the slab and past it: every kept message keeps its own bytes.
      const sizes = Array.from({ length: 40 }, (_, i) => 1 + ((i * 97) % 900))
      const many = yield* collect(a, sizes.length)
      for (const [i, n] of sizes.entries()) {
        yield* b.sendTo(toA!, "C", new Uint8Array(n).fill(65 + (i % 26)))
        yield* Effect.sleep("2 millis") // a read each
      }
      const kept = yield* Fiber.join(many).pipe(Effect.timeout("3 seconds"))
      assert.deepStrictEqual(kept.map((m) => m.text), sizes.map((n, i) => String.fromCharCode(65 + (i % 26)).repeat(n)))
      const count = (s: { connectionsOpened: number; connectionsAccepted: number }) => [s.connectionsOpened, s.connectionsAccepted]
      assert.deepStrictEqual(count(yield* a.stats), [1, 0])
      assert.deepStrictEqual(count(yield* b.stats), [0, 1])
      // Idle past its timeout, the connection closes: b then opens one of its own.
      yield* Effect.sleep("1 second")
      const later = yield* collect(a, 1)
      yield* b.sendTo(toA!, "C", "again")
      assert.deepStrictEqual((yield* Fiber.join(later).pipe(Effect.timeout("3 seconds"))).map((m) => m.text), ["again"])
      assert.deepStrictEqual(count(yield* b.stats), [1, 1])
    }))

  // Both ends of a connection: the sender's own (the receiver reads it as a
  // stream), and the receiver's, which the sender answers on (the receiver
  // reads it through `onread`, into the buffer its dialed connections share).
  for (const dialer of ["sender", "receiver"] as const) {
    it.live(`a slow subscriber slows a tcp sender down instead of losing messages (the ${dialer} connected)`, () =>
      Effect.gen(function*() {
        const receiver = yield* member({ name: `slow-rx-${dialer}`, ...fast, bufferSize: 16 })
        const sender = yield* member({ name: `fast-tx-${dialer}`, ...fast })
        const [target] = yield* eventually(sender.resolve(`slow-rx-${dialer}`), (s) => s.length === 1)
        if (dialer === "receiver") yield* opened(receiver, sender, `fast-tx-${dialer}`)
        const count = 20_000
        let seen = 0
        let inOrder = true
        const consumer = yield* receiver.messages.pipe(
          Stream.take(count),
          Stream.runForEach((m) =>
            Effect.gen(function*() {
              if (m.text !== String(seen)) inOrder = false
              seen++
              if (seen % 500 === 0) yield* Effect.sleep("1 millis") // a consumer slower than the sender
            })
          ),
          Effect.forkChild
        )
        yield* Effect.sleep("20 millis")
        for (let i = 0; i < count; i++) yield* sender.sendTo(target!, "C", String(i))
        yield* Fiber.join(consumer).pipe(Effect.timeout("20 seconds"))
        assert.strictEqual(seen, count)
        assert.isTrue(inOrder)
        const drops = (yield* receiver.stats).drops
        assert.isUndefined(drops["queue-full"])
        assert.strictEqual((yield* sender.stats).connectionsOpened, dialer === "sender" ? 1 : 0)
      }))
  }

  it.live("falls back from refused tcp to udp, and filters multicast to the target", () =>
    Effect.gen(function*() {
      const target = yield* member({ name: "target", ...fast })
      const bystander = yield* member({ name: "bystander", ...fast })
      const sender = yield* member({ name: "sender", ...fast })
      const [t] = yield* eventually(sender.resolve("target"), (s) => s.length === 1)
      yield* eventually(sender.resolve("bystander"), (s) => s.length === 1)
      // A port nobody listens on: bind one, note it, close it.
      const closed = yield* Effect.promise(() =>
        new Promise<number>((resolve) => {
          const srv = net.createServer().listen(0, "127.0.0.1", () => {
            const port = (srv.address() as net.AddressInfo).port
            srv.close(() => resolve(port))
          })
        })
      )
      const udp = t!.protocols.find((p) => p.protocol === "udp")!
      const refused: Service = { ...t!, protocols: [{ protocol: "tcp", port: closed }, udp] }
      const atTarget = yield* collect(target, 2)
      const [viaUdp] = yield* sender.sendTo(refused, "C", "fell back")
      assert.strictEqual(viaUdp?.protocol, "udp")
      // No port known at all: a multicast that only the target accepts.
      const unknown: Service = { ...t!, protocols: [] }
      const [viaGroup] = yield* sender.sendTo(unknown, "C", "filtered multicast")
      assert.strictEqual(viaGroup?.protocol, "udp")
      const got = yield* Fiber.join(atTarget).pipe(Effect.timeout("3 seconds"))
      assert.sameMembers(got.map((m) => m.text), ["fell back", "filtered multicast"])
      yield* eventually(bystander.stats, (s) => (s.drops.filtered ?? 0) >= 1)
    }))

  it.live("reports every failed attempt when no protocol gets through", () =>
    Effect.gen(function*() {
      const sender = yield* member({ name: "lonely", ...fast, protocols: ["tcp"] })
      const nobody: Service = {
        id: "0000000000aa@nobody",
        name: "nobody",
        hostId: "0000000000aa",
        instance: "0000000000000001",
        address: "127.0.0.1",
        local: true,
        protocols: [{ protocol: "tcp", port: 1 }],
        tags: [],
        lastSeen: 0,
        sources: [],
        stale: false
      }
      const error = yield* Effect.flip(sender.sendTo(nobody, "C", "x"))
      assert.strictEqual(error._tag, "SendFailed")
      if (error._tag === "SendFailed") {
        assert.deepStrictEqual(error.attempts.map((a) => a.protocol), ["tcp"])
        assert.strictEqual(error.service.id, nobody.id)
      }
      const notFound = yield* Effect.flip(sender.sendTo("no-such-service", "C", "x"))
      assert.strictEqual(notFound._tag, "ServiceNotFound")
      const badOp = yield* Effect.flip(sender.broadcast("", "x"))
      assert.strictEqual(badOp._tag, "InvalidMessage")
    }))

  it.live("oversize data is FrameTooLarge for udp and goes by tcp instead", () =>
    Effect.gen(function*() {
      const receiver = yield* member({ name: "big-rx", ...fast, protocols: ["udp", "tcp"] })
      const sender = yield* member({ name: "big-tx", ...fast })
      const [target] = yield* eventually(sender.resolve("big-rx"), (s) => s.length === 1)
      assert.deepStrictEqual(target!.protocols.map((p) => p.protocol), ["udp", "tcp"])
      const big = new Uint8Array(70_000).fill(7)
      const tooLarge = yield* Effect.flip(sender.broadcast("C", big))
      assert.strictEqual(tooLarge._tag, "FrameTooLarge")
      const got = yield* collect(receiver, 2)
      const [small] = yield* sender.sendTo(target!, "C", "small")
      const [large] = yield* sender.sendTo(target!, "C", big)
      assert.strictEqual(small?.protocol, "udp") // the receiver prefers udp ...
      assert.strictEqual(large?.protocol, "tcp") // ... but 70 kB does not fit a datagram
      const messages = yield* Fiber.join(got).pipe(Effect.timeout("3 seconds"))
      const bigOne = messages.find((m) => m.data.length === big.length)
      assert.strictEqual(bigOne?.protocol, "tcp")
    }))

  it.live("a query does not overtake the messages sent before it, nor a reply the messages its responder sent first", () =>
    Effect.gen(function*() {
      const responder = yield* member({ name: "order-rx", ...fast, protocols: ["tcp"] })
      const asker = yield* member({ name: "order-tx", ...fast, protocols: ["tcp"] })
      const [target] = yield* eventually(asker.resolve("order-rx"), (s) => s.length === 1)
      const [back] = yield* eventually(responder.resolve("order-tx"), (s) => s.length === 1)
      // The responder counts the messages it has handled, and answers with that count.
      let handled = 0
      yield* responder.hook(HookPoint.op("C", "receive"), (m) =>
        Effect.sync(() => {
          handled++
          return m
        }))
      yield* responder.hook(HookPoint.query("COUNT"), () =>
        // ... and sends 500 messages of its own before it answers.
        Effect.forEach(Array.from({ length: 500 }), () => responder.sendTo(back!, "D", "d"), { discard: true }).pipe(
          Effect.as(String(handled))
        ))
      let delivered = 0
      yield* asker.hook(HookPoint.op("D", "receive"), (m) =>
        Effect.sync(() => {
          delivered++
          return m
        }))
      for (let round = 1; round <= 3; round++) {
        for (let i = 0; i < 2000; i++) yield* asker.sendTo(target!, "C", "c")
        const result = yield* asker.queryAll({ target: target!, op: "COUNT", data: "" })
        assert.strictEqual([...result.responses.values()][0]?.text, String(2000 * round), "the query came after every message")
        assert.strictEqual(delivered, 500 * round, "the reply came after the responder's messages")
      }
    }))

  it.live("messages whose receive hooks take their time still arrive in the order sent", () =>
    Effect.gen(function*() {
      const receiver = yield* member({ name: "slow-hook-rx", ...fast, protocols: ["tcp"] })
      const sender = yield* member({ name: "slow-hook-tx", ...fast, protocols: ["tcp"] })
      const [target] = yield* eventually(sender.resolve("slow-hook-rx"), (s) => s.length === 1)
      // Every 25th message makes its hook wait, while the next ones arrive.
      yield* receiver.hook(HookPoint.op("N", "receive"), (m) =>
        Number(m.text) % 25 === 0 ? Effect.sleep("5 millis").pipe(Effect.as(m)) : Effect.succeed(m))
      const got = yield* collect(receiver, 300)
      for (let i = 0; i < 300; i++) {
        yield* sender.sendTo(target!, "N", String(i))
        if (i % 10 === 0) yield* Effect.sleep("1 millis") // let some arrive alone, on an idle line
      }
      const messages = yield* Fiber.join(got).pipe(Effect.timeout("10 seconds"))
      assert.deepStrictEqual(messages.map((m) => Number(m.text)), Array.from({ length: 300 }, (_, i) => i))
    }))

  it.live("messages of every size over one tcp connection arrive whole and in order, both ways, sealed or not", () =>
    Effect.gen(function*() {
      // Small ones share a write buffer; from 64 KiB up a frame is a write of
      // its own, in a buffer reused by size; bursts of 40 kB and of 70 kB
      // ones cycle both kinds of buffer while earlier writes are still pending.
      const sizes = [
        10, 100_000, 10, 300_000, 2 * 1024 * 1024, 10, 65_536,
        ...Array.from({ length: 60 }, () => 40_000), 10,
        ...Array.from({ length: 120 }, () => 70_000), 10
      ]
      // Each message is filled with its own index, so a mix-up or a torn frame shows.
      const sent = sizes.map((n, i) => new Uint8Array(n).fill(i))
      const carry = (from: Cluster["Service"], to: Cluster["Service"], name: string) =>
        Effect.gen(function*() {
          const [target] = yield* eventually(from.resolve(name), (s) => s.length === 1)
          const got = yield* collect(to, sizes.length)
          for (const data of sent) yield* from.sendTo(target!, "S", data)
          const messages = yield* Fiber.join(got).pipe(Effect.timeout("10 seconds"))
          assert.deepStrictEqual(messages.map((m) => m.data.length), sizes)
          for (const [i, m] of messages.entries()) assert.isTrue(m.data.every((b) => b === i), `message ${i} intact`)
          assert.isTrue(messages.every((m) => m.protocol === "tcp"))
        })
      for (const secret of [undefined, "size-test-secret"]) {
        const receiver = yield* member({ name: `sizes-rx-${secret === undefined}`, ...fast, protocols: ["tcp"], secret })
        const sender = yield* member({ name: `sizes-tx-${secret === undefined}`, ...fast, protocols: ["tcp"], secret })
        yield* carry(sender, receiver, `sizes-rx-${secret === undefined}`)
        // Back on the sender's connection: what it reads there lands in the
        // buffer its dialed connections share, a read at a time, copied out.
        yield* carry(receiver, sender, `sizes-tx-${secret === undefined}`)
        assert.strictEqual((yield* receiver.stats).connectionsOpened, 0)
      }
    }))
})
