import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Result } from "effect"
import { ClusterLive, type JoinError, makeConfig } from "cluster-comm"

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

  it("names the field of every bad value", () => {
    const cases: Array<[Parameters<typeof makeConfig>[0], string]> = [
      [{ port: 70000 }, "port"],
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
      [{ colour: "blue" } as never, "colour"]
    ]
    for (const [input, field] of cases) {
      const e = fieldOf(input)
      assert.strictEqual(e?._tag, "JoinError")
      assert.strictEqual(e?.reason, "InvalidConfig")
      assert.strictEqual(e?.field, field, `${JSON.stringify(input)}: ${e?.message}`)
      assert.include(e?.message, field)
    }
  })

  it.effect("a bad configuration fails the layer with a typed JoinError", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(ClusterLive({ name: "x", port: 0 })).pipe(Effect.flip)
      assert.strictEqual((error as JoinError).field, "port")
    }))
})
