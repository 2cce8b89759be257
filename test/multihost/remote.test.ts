import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { testCluster } from "../helpers.ts"
import { canUseNamespaces, makeLan, startAgent } from "../support/hosts.ts"

// Hosts are network namespaces on a bridge of their own; nothing here reaches
// the machine's interfaces. Namespaces need root: CI has it.
const where = testCluster(6)
const lan = { ...where, remote: 1, interface: "eth0", heartbeat: "200 millis", ttl: "2 seconds" } as const

describe.skipIf(!canUseNamespaces())("members on several hosts (network namespaces)", () => {
  it.live("remote 1 members on two hosts discover each other and exchange messages", () =>
    Effect.gen(function*() {
      const { hosts } = yield* makeLan(2)
      const [h1, h2] = hosts
      const a = yield* startAgent(h1, { name: "a", ...lan })
      // The interface may also be named by its address.
      const b = yield* startAgent(h2, { name: "b", ...lan, interface: h2!.address })
      const joinedA = yield* a.waitFor((l) => l.joined !== undefined)
      yield* b.waitFor((l) => l.joined !== undefined)
      assert.strictEqual(joinedA.joined.address, h1!.address)
      const foundByA = yield* a.waitFor((l) => typeof l.found === "string" && l.found.endsWith("@b"))
      assert.strictEqual(foundByA.address, h2!.address)
      yield* b.waitFor((l) => typeof l.found === "string" && l.found.endsWith("@a"))

      const broadcast = yield* a.command({ cmd: "broadcast", op: "C", data: "Hello, Foo!" })
      assert.strictEqual(broadcast.ok, "broadcast")
      const got = yield* b.waitFor((l) => l.message?.text === "Hello, Foo!")
      assert.strictEqual(got.message.protocol, "udp")

      const sent = yield* a.command({ cmd: "sendTo", target: "b", op: "C", data: "Hello, Bar!" })
      assert.strictEqual(sent.ok[0].protocol, "tcp")
      const direct = yield* b.waitFor((l) => l.message?.text === "Hello, Bar!")
      assert.strictEqual(direct.message.protocol, "tcp")
      assert.match(direct.message.from, /@a$/)
    }), 30_000)

  it.live("a remote 0 member sees its own host only, and other hosts see nothing of it", () =>
    Effect.gen(function*() {
      const { hosts } = yield* makeLan(2)
      const [h1, h2] = hosts
      const hostOnly = yield* startAgent(h1, { name: "host-only", ...where, heartbeat: "200 millis", ttl: "2 seconds" })
      const onLan = yield* startAgent(h1, { name: "on-lan", ...lan })
      const remote = yield* startAgent(h2, { name: "remote", ...lan })
      // Positive control: the LAN members on both hosts find each other ...
      yield* remote.waitFor((l) => typeof l.found === "string" && l.found.endsWith("@on-lan"))
      yield* onLan.waitFor((l) => typeof l.found === "string" && l.found.endsWith("@remote"))
      // ... and after many more heartbeats the host-only member knows only its
      // own host's member: the other host's beacons reach its socket (the
      // kernel hands group traffic to every socket on the port) and are dropped.
      yield* Effect.sleep("1 second")
      const names = (reply: Record<string, any>) => reply.ok.map((s: { name: string }) => s.name)
      assert.deepStrictEqual(names(yield* hostOnly.command({ cmd: "services" })), ["on-lan"])
      const stats = yield* hostOnly.command({ cmd: "stats" })
      assert.isAbove(stats.ok.drops["non-local"] ?? 0, 0)
      assert.deepStrictEqual(names(yield* remote.command({ cmd: "services" })), ["on-lan"])
    }), 30_000)
})
