import { existsSync, readdirSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, } from "effect"
import {
  Cluster,
  type ClusterConfigInput,
  ClusterLive,
  ClusterServices,
  encodeFrame,
  type Inlet,
  type JoinError,
  ProtocolFailure,
  type ProtocolPlugin,
  socketDir,
  Transport
} from "cluster-comm"
import { collect, eventually, leavable, member, testCluster } from "../helpers.ts"

const where = { ...testCluster(9), heartbeat: "200 millis", ttl: "2 seconds" } as const

/**
 * A protocol plug-in that carries frames through memory between members of
 * one process: a whole protocol in a few lines, through the same interface as
 * tcp, udp and unix.
 */
const mailboxes = new Map<number, Inlet>()
let nextBox = 1
const memory: ProtocolPlugin = {
  name: "mem",
  id: 40,
  make: ({ inlet }) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const box = nextBox++
        mailboxes.set(box, inlet)
        return box
      }),
      (box) => Effect.sync(() => mailboxes.delete(box))
    ).pipe(
      Effect.map((box) => ({
        name: "mem",
        port: box,
        maxFrame: 1 << 20,
        send: (to, frame) =>
          Effect.suspend(() => {
            const target = mailboxes.get(to.port)
            if (target === undefined) return Effect.fail(new ProtocolFailure({ protocol: "mem", message: "no such mailbox" }))
            return Effect.sync(() => void target.receive(encodeFrame(frame), "mem", "127.0.0.1"))
          })
      }))
    )
}

const withPlugin = (config: ClusterConfigInput) =>
  Layer.build(ClusterLive(config, { protocols: [memory] })).pipe(Effect.map((ctx) => Context.get(ctx, Cluster)))

describe("protocols", () => {
  it.live("unix sockets carry messages between local members, before tcp, in a private directory", () =>
    Effect.gen(function*() {
      const rx = yield* leavable({ name: "unix-rx", ...where, protocols: ["tcp", "udp", "unix"] })
      const tx = yield* member({ name: "unix-tx", ...where, protocols: ["tcp", "unix", "udp"] })
      const [target] = yield* eventually(tx.resolve("unix-rx"), (s) => s.length === 1)
      assert.deepStrictEqual(target!.protocols.map((p) => p.protocol), ["tcp", "udp", "unix"])
      const got = yield* collect(rx.cluster, 1)
      const [d] = yield* tx.sendTo(target!, "C", "over a unix socket")
      assert.strictEqual(d?.protocol, "unix") // a local peer: unix first, whatever its order
      const [m] = yield* Fiber.join(got)
      assert.strictEqual(m?.protocol, "unix")
      // A peer on another host never gets unix: the same service seen as remote goes by tcp.
      const [remote] = yield* tx.sendTo({ ...target!, local: false }, "C", "as if remote")
      assert.strictEqual(remote?.protocol, "tcp")
      const dir = socketDir()
      assert.strictEqual(statSync(dir).mode & 0o777, 0o700)
      const instance = (yield* rx.cluster.self).instance
      const file = readdirSync(dir).find((f) => f.startsWith(instance))
      assert.isDefined(file)
      yield* rx.leave
      assert.isFalse(existsSync(join(dir, file!))) // removed on leave
    }))

  it.live("socket files left by crashed members are cleared and never block a new member", () =>
    Effect.gen(function*() {
      const dir = socketDir()
      // What a crashed member leaves: a socket path nothing listens on.
      const stale = join(dir, "00000000000000aa-1.sock")
      writeFileSync(stale, "")
      const m = yield* member({ name: "unix-after-crash", ...where, protocols: ["unix", "tcp", "udp"] })
      assert.isFalse(existsSync(stale))
      assert.strictEqual((yield* m.self).protocols[0]?.protocol, "unix")
    }))

  it.live("a protocol plug-in is used like the built-in ones", () =>
    Effect.gen(function*() {
      const rx = yield* withPlugin({ name: "mem-rx", ...where, protocols: ["mem", "udp"] })
      const tx = yield* withPlugin({ name: "mem-tx", ...where, protocols: ["mem", "udp"] })
      const [target] = yield* eventually(tx.resolve("mem-rx"), (s) => s.length === 1)
      assert.deepStrictEqual(target!.protocols.map((p) => p.protocol), ["mem", "udp"])
      const got = yield* collect(rx, 1)
      const [d] = yield* tx.sendTo(target!, "C", "through memory")
      assert.strictEqual(d?.protocol, "mem")
      const [m] = yield* Fiber.join(got)
      assert.deepStrictEqual([m?.text, m?.protocol], ["through memory", "mem"])
    }))

  it.live("an unknown protocol, or a plug-in whose wire id clashes, is a JoinError", () =>
    Effect.gen(function*() {
      const unknown = yield* Effect.flip(member({ name: "no-sctp", ...where, protocols: ["sctp", "udp"] }))
      assert.deepStrictEqual([(unknown as JoinError).reason, (unknown as JoinError).field], ["InvalidConfig", "protocols"])
      const clash: ProtocolPlugin = { ...memory, name: "fake-tcp", id: 1 }
      const error = yield* Effect.flip(
        Layer.build(ClusterLive({ name: "clash", ...where, protocols: ["fake-tcp", "udp"] }, { protocols: [clash] }))
      )
      assert.strictEqual((error as JoinError).field, "protocols")
      assert.include((error as JoinError).message, "clashes")
    }))

  it.live("a peer that reaches us only by a fallback gets our broken listener rebuilt (self-healing)", () =>
    Effect.gen(function*() {
      const stack = yield* Layer.build(ClusterServices({ name: "heal-a", ...where }))
      const healing = Context.get(stack, Cluster)
      const transport = Context.get(stack, Transport)
      const peer = yield* member({ name: "heal-b", ...where })
      const [before] = yield* eventually(peer.resolve("heal-a"), (s) => s.length === 1)
      const tcpPort = (s: { readonly protocols: ReadonlyArray<{ protocol: string; port: number }> }) =>
        s.protocols.find((p) => p.protocol === "tcp")!.port
      // The tcp listener dies under the member; it does not notice by itself.
      yield* transport.protocols.get("tcp")!.close!
      const got = yield* collect(healing, 2)
      const [fallback] = yield* peer.sendTo(before!, "C", "by the fallback")
      assert.strictEqual(fallback?.protocol, "udp")
      // The peer told it; it checked, rebuilt on a new port and beat.
      const [after] = yield* eventually(peer.resolve("heal-a"), (s) => s.length === 1 && tcpPort(s[0]!) !== tcpPort(before!))
      const [healed] = yield* peer.sendTo(after!, "C", "by tcp again")
      assert.strictEqual(healed?.protocol, "tcp")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => `${m.text}/${m.protocol}`), ["by the fallback/udp", "by tcp again/tcp"])
    }))

  it.live("a repair notice for a listener that works changes nothing", () =>
    Effect.gen(function*() {
      const stack = yield* Layer.build(ClusterServices({ name: "sound", ...where }))
      const sound = Context.get(stack, Cluster)
      const peer = yield* member({ name: "sound-peer", ...where })
      const [target] = yield* eventually(peer.resolve("sound"), (s) => s.length === 1)
      const port = (yield* sound.self).protocols.find((p) => p.protocol === "tcp")!.port
      // A service value with a dead tcp port: the send falls back, the notice goes out, the check passes.
      const fake = { ...target!, protocols: [{ protocol: "tcp", port: 1 }, ...target!.protocols.filter((p) => p.protocol !== "tcp")] }
      assert.strictEqual((yield* peer.sendTo(fake, "C", "x"))[0]?.protocol, "udp")
      yield* Effect.sleep("300 millis")
      assert.strictEqual((yield* sound.self).protocols.find((p) => p.protocol === "tcp")!.port, port)
    }))
})
