import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Result, Schema, SchemaIssue } from "effect"
import { ClusterLive, type JoinError, makeConfig } from "cluster-comm"
import { ClusterConfigInput } from "cluster-comm/schema"

const fieldOf = (input: Parameters<typeof makeConfig>[0]) => {
  const r = makeConfig(input)
  assert.isTrue(Result.isFailure(r), `expected ${JSON.stringify(input)} to be rejected`)
  return Result.isFailure(r) ? r.failure : undefined
}

describe("configuration", () => {
  it("fills the documented defaults", () => {
    const r = makeConfig("service_one")
    assert.isTrue(Result.isSuccess(r))
    if (!Result.isSuccess(r)) return
    const c = r.success
    assert.strictEqual(c.name, "service_one")
    assert.strictEqual(c.address, "230.230.230.230")
    assert.strictEqual(c.port, 23000)
    assert.strictEqual(c.remote, 0)
    assert.deepStrictEqual(c.protocols, ["tcp", "udp"])
    assert.strictEqual(Duration.toMillis(c.heartbeat), 1000)
    assert.strictEqual(Duration.toMillis(c.ttl), 3000)
  })

  it("defaults the name to the process id and accepts the Tcl timings", () => {
    const r = makeConfig({ heartbeat: "120 seconds", ttl: "600 seconds" })
    assert.isTrue(Result.isSuccess(r))
    if (Result.isSuccess(r)) {
      assert.strictEqual(r.success.name, String(process.pid))
      assert.strictEqual(Duration.toMillis(r.success.ttl), 600_000)
    }
  })

  // One list for both tests: makeConfig's checks and the Schema of cluster-comm/schema.
  const badCases: Array<[Parameters<typeof makeConfig>[0], string]> = [
      [{ port: 70000 }, "port"],
      [{ port: 0 }, "port"],
      [{ port: 1.5 }, "port"],
      [{ address: "10.0.0.1" }, "address"],
      [{ address: "230.1.2.300" }, "address"],
      [{ name: "" }, "name"],
      [{ name: "x".repeat(49) }, "name"],
      [{ remote: -1 }, "remote"],
      [{ remote: 256 }, "remote"],
      [{ protocols: [] }, "protocols"],
      [{ protocols: ["tcp", "tcp"] }, "protocols"],
      [{ protocols: ["SCTP!"] } as never, "protocols.0"],
      [{ heartbeat: "soon" } as never, "heartbeat"],
      [{ heartbeat: "2 seconds", ttl: "1 second" }, "ttl"],
      [{ hostId: "not-a-mac" }, "hostId"],
      [{ colour: "blue" } as never, "colour"],
      [{ tags: ["ok", ""] }, "tags.1"],
      [{ keyring: [{ id: 1, secret: "s" }, { id: 300, secret: "t" }] }, "keyring.1.id"],
      [{ keyring: [{ id: 1 }] } as never, "keyring.0.secret"],
      [{ allow: ["10.0.0.0/33"] }, "allow.0"],
      [{ allow: ["10.0.0.0/8", "fd00::/8", "fd00::/129"] }, "allow.2"],
      [{ allow: ["fd00::1"] }, "allow.0"],
      [{ channels: [7, 70000] }, "channels.1"],
      [{ bufferSize: 8 }, "bufferSize"],
      [{ idleTimeout: -5 }, "idleTimeout"],
      [{ port: "23000" } as never, "port"],
      [{ tcl: "yes" } as never, "tcl"],
      [{ tcl: true, secret: "s" }, "tcl"] // the Tcl package cannot seal: checked across fields
    ]

  it("names the field of every bad value", () => {
    for (const [input, field] of badCases) {
      const e = fieldOf(input)
      assert.strictEqual(e?._tag, "JoinError")
      assert.strictEqual(e?.reason, "InvalidConfig")
      assert.strictEqual(e?.field, field, `${JSON.stringify(input)}: ${e?.message}`)
      assert.include(e?.message, field)
    }
  })

  it("the Schema of cluster-comm/schema accepts and refuses what makeConfig does, at the same path", () => {
    const decode = Schema.decodeUnknownResult(ClusterConfigInput)
    const formatter = SchemaIssue.makeFormatterStandardSchemaV1()
    for (const [input, field] of badCases) {
      // ttl against heartbeat, and tcl against keys, are checked by makeConfig alone, across fields
      if (field === "ttl" || (field === "tcl" && typeof (input as { tcl?: unknown }).tcl === "boolean")) continue
      const r = decode(input, { onExcessProperty: "error" })
      assert.isTrue(Result.isFailure(r), `the Schema accepted ${JSON.stringify(input)}`)
      if (Result.isFailure(r)) assert.strictEqual(formatter(r.failure.issue).issues[0]?.path?.map(String).join("."), field)
    }
    const good: Array<Exclude<Parameters<typeof makeConfig>[0], string>> = [
      {},
      { name: "service_one", port: 23001, heartbeat: "2 seconds", ttl: 9000, protocols: ["unix", "tcp"], tags: ["a", "b"] },
      { remote: 1, interface: "eth0", allow: ["10.1.0.0/16", "fd00::/8", "10.2.3.4/16"], keyring: [{ id: 0, secret: "x" }], primary: 0, channels: [9] },
      { idleTimeout: Duration.minutes(1), maxFrame: 1024, bufferSize: 16, hostId: "0123456789ab", tcl: true }
    ]
    for (const input of good) {
      assert.isTrue(Result.isSuccess(decode(input, { onExcessProperty: "error" })), JSON.stringify(input))
      assert.isTrue(Result.isSuccess(makeConfig(input)), JSON.stringify(input))
    }
  })

  it.effect("a bad configuration fails the layer with a typed JoinError", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(ClusterLive({ name: "x", port: 0 })).pipe(Effect.flip)
      assert.strictEqual((error as JoinError).field, "port")
    }))
})
