import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { canUseNamespaces, inHost, makeLan, startAgent } from "../support/hosts.ts"
import { startTcl, tclMissing } from "../support/tcl.ts"

// Live: members of the original Tcl package and cluster-comm members in one
// cluster, on a test host (a network namespace with a veth named eth0, as the
// package needs) that the test creates and removes. Everything runs there on
// the package's own group and port (230.230.230.230:23000), host only.
const missing = !canUseNamespaces() ? "network namespaces need root (CI has it)" : tclMissing()
if (missing !== undefined) console.log(`Tcl interoperation tests skipped: ${missing}`)

/** One test host, with a route for multicast (the package sends through the default interface). */
const tclHost = Effect.gen(function*() {
  const { hosts } = yield* makeLan(1)
  const host = hosts[0]!
  yield* inHost(host, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")
  return host
})
const bridge = (name: string) => ({ name, tcl: true, heartbeat: "500 millis", ttl: "2 seconds" }) as const

describe.skipIf(missing !== undefined)("speaking with the Tcl package (live)", () => {
  it.live("the quick example: two Tcl members, and a cluster-comm member as service_three that sees, broadcasts, sends and queries", () =>
    Effect.gen(function*() {
      const host = yield* tclHost
      const one = yield* startTcl(host, "service_one", "listen")
      const two = yield* startTcl(host, "service_two", "listen")
      yield* one.waitFor(/^joined:/)
      yield* two.waitFor(/^joined:/)
      // Tcl members first, then ours: the port is shared in this order too.
      const three = yield* startAgent(host, bridge("service_three"))
      yield* three.waitFor((l) => l.found?.endsWith("@service_one"))
      yield* three.waitFor((l) => l.found?.endsWith("@service_two"))
      const services = yield* three.command({ cmd: "services" })
      assert.deepStrictEqual(services.ok.map((s: any) => `${s.name} ${s.tags} ${s.protocols}`).sort(), [
        "service_one service_one tcp,udp",
        "service_two service_two tcp,udp"
      ])
      // The Tcl members know us by our name, as our first tag.
      yield* one.waitFor(/HOOK service discovered: \S+ tags=service_three/)

      yield* three.command({ cmd: "broadcast", op: "event", data: `puts "Hello, Foo!"` })
      yield* one.waitFor(/^Hello, Foo!$/)
      yield* two.waitFor(/^Hello, Foo!$/)
      const sent = yield* three.command({ cmd: "sendTo", target: "service_one", op: "event", data: `puts "Hello, Bar!"` })
      assert.strictEqual(sent.ok[0].protocol, "tcp")
      yield* one.waitFor(/HOOK event from service_three: .*filter/)
      yield* one.waitFor(/^Hello, Bar!$/)

      // Their query hook runs the query's text (their convention, on their side): `set ::var`.
      const asked = yield* three.command({ cmd: "queryAll", target: "localhost", op: "query", data: "set ::var" })
      assert.deepStrictEqual(asked.ok.responses.sort(), [["service_one", "Hello, service_one"], ["service_two", "Hello, service_two"]])
      assert.deepStrictEqual(asked.ok.missing, [])
      assert.notInclude(two.lines.join("\n"), "Hello, Bar!")
    }), 60_000)

  it.live("the reverse: a Tcl member drives, cluster-comm members listen, answer and see it leave", () =>
    Effect.gen(function*() {
      const host = yield* tclHost
      // Ours first, then the Tcl member: the port is shared in this order too.
      const one = yield* startAgent(host, bridge("service_one"))
      const two = yield* startAgent(host, bridge("service_two"))
      yield* one.waitFor((l) => l.joined !== undefined)
      yield* two.waitFor((l) => l.joined !== undefined)
      yield* one.command({ cmd: "respond", op: "query", data: "one answers" })
      yield* two.command({ cmd: "respond", op: "query", data: "two answers" })
      const three = yield* startTcl(host, "service_three", "drive", 2000)
      yield* three.waitFor(/^resolve service_one -> \S+/, 8000)
      assert.include(three.lines.join("\n"), "tags=service_two")
      const broadcast = yield* one.waitFor((l) => l.message?.text === `puts "Hello, Foo!"`)
      assert.deepStrictEqual([broadcast.message.op, broadcast.message.protocol], ["event", "udp"])
      yield* two.waitFor((l) => l.message?.text === `puts "Hello, Foo!"`)
      const direct = yield* one.waitFor((l) => l.message?.text === `puts "Hello, Bar!"`)
      assert.strictEqual(direct.message.protocol, "tcp")
      yield* three.waitFor(/^query response from service_one: .*one answers \(asked: {2}set ::var \)/, 8000)
      yield* three.waitFor(/^query response from service_two: .*two answers/, 8000)
      yield* three.waitFor(/^query done/, 8000)
      // It disconnects by hand (its destructor cannot): both drop it at once.
      const left = yield* one.waitFor((l) => l.lost?.endsWith("@service_three"), 10_000)
      assert.strictEqual(left.why, "left")
      yield* two.waitFor((l) => l.lost?.endsWith("@service_three"))
      assert.isUndefined(two.lines.find((l) => l.message?.text === `puts "Hello, Bar!"`))
    }), 60_000)

  it.live("a killed Tcl member is lost once a send to it fails; a leaving cluster-comm member runs the Tcl member's service lost hook", () =>
    Effect.gen(function*() {
      const host = yield* tclHost
      const doomed = yield* startTcl(host, "service_one", "listen")
      const watcher = yield* startTcl(host, "service_two", "listen")
      yield* doomed.waitFor(/^joined:/)
      yield* watcher.waitFor(/^joined:/)
      const three = yield* startAgent(host, bridge("service_three"))
      yield* three.waitFor((l) => l.found?.endsWith("@service_one"))
      yield* three.waitFor((l) => l.found?.endsWith("@service_two"))
      const seen = yield* watcher.waitFor(/HOOK service discovered: \S+ tags=service_three/)
      const us = /discovered: (\S+)/.exec(seen)![1]!

      // Killed outright: no disconnect, and the package beats only every ~2 minutes.
      yield* doomed.kill("SIGKILL")
      yield* three.command({ cmd: "sendTo", target: "service_one", op: "event", data: "are you there?" })
      const lost = yield* three.waitFor((l) => l.lost?.endsWith("@service_one"), 8000)
      assert.strictEqual(lost.why, "expired")
      assert.isUndefined(three.lines.find((l) => l.lost?.endsWith("@service_two")))

      // Ours leaves (SIGTERM: the leave goes out as the package's disconnect).
      yield* three.kill("SIGTERM")
      yield* watcher.waitFor(new RegExp(`HOOK service lost: ${us.replace(/[:.]/g, "\\$&")}$`))
    }), 60_000)

  it.live("a mixed cluster: native-only members are not disturbed by Tcl members, and meet them through none of it", () =>
    Effect.gen(function*() {
      const host = yield* tclHost
      const tcl = yield* startTcl(host, "service_one", "listen")
      yield* tcl.waitFor(/^joined:/)
      const native = yield* startAgent(host, { name: "native", heartbeat: "500 millis", ttl: "2 seconds" } as const)
      const both = yield* startAgent(host, bridge("both"))
      yield* both.waitFor((l) => l.found?.endsWith("@service_one"))
      yield* both.waitFor((l) => l.found?.endsWith("@native"))
      yield* native.waitFor((l) => l.found?.endsWith("@both"))
      yield* tcl.waitFor(/HOOK service discovered: \S+ tags=both/)

      // The bilingual member broadcasts in both dialects: each hears it once, in its own.
      yield* both.command({ cmd: "broadcast", op: "event", data: `puts "to everyone"` })
      yield* tcl.waitFor(/^to everyone$/)
      const heard = yield* native.waitFor((l) => l.message?.text === `puts "to everyone"`)
      assert.strictEqual(heard.message.protocol, "udp")
      const sent = yield* native.command({ cmd: "sendTo", target: "both", op: "C", data: "native to both" })
      assert.strictEqual(sent.ok[0].protocol, "tcp")
      yield* both.waitFor((l) => l.message?.text === "native to both")

      // The native-only member never knew the Tcl member; its packets were counted, not taken.
      const services = yield* native.command({ cmd: "services" })
      assert.deepStrictEqual(services.ok.map((s: any) => s.name), ["both"])
      const stats = yield* native.command({ cmd: "stats" })
      assert.isAbove(stats.ok.drops["bad-magic"] ?? 0, 0)
      assert.deepStrictEqual(Object.keys(stats.ok.drops).filter((r) => r !== "bad-magic" && r !== "own"), [])
      assert.notInclude(tcl.lines.join("\n"), "tags=native")
    }), 60_000)
})
