import net from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { collect, eventually, member, testCluster } from "../helpers.ts"

// Real sockets, one host: the connection limits a member enforces.
const where = { ...testCluster(19), heartbeat: "100 millis", ttl: "2 seconds" } as const

/** A raw tcp connection to a member's listener, closed with the test's scope; says when the member closes it. */
const connectTo = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{ socket: net.Socket; closed: Promise<void> }>((resume) => {
      const socket = net.connect({ host: "127.0.0.1", port })
      socket.on("error", () => {})
      const closed = new Promise<void>((r) => socket.once("close", () => r()))
      socket.once("connect", () => resume(Effect.succeed({ socket, closed })))
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  )

const tcpPort = (m: { readonly self: Effect.Effect<{ readonly protocols: ReadonlyArray<{ protocol: string; port: number }> }> }) =>
  Effect.map(m.self, (s) => s.protocols.find((p) => p.protocol === "tcp")!.port)

const isClosed = (c: { closed: Promise<void> }) =>
  Effect.promise(() => Promise.race([c.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 0))]))

describe("connection limits (real sockets)", () => {
  it.live("an idle connection is closed after idleTimeout, inbound and outbound; a busy one stays", () =>
    Effect.gen(function*() {
      const a = yield* member({ name: "idle-a", ...where, idleTimeout: "300 millis" })
      const b = yield* member({ name: "idle-b", ...where, idleTimeout: "300 millis" })
      const [peer] = yield* eventually(a.resolve("idle-b"), (s) => s.length === 1)
      // Inbound: a connection that never says anything is closed.
      const quiet = yield* connectTo(yield* tcpPort(a))
      // One that keeps sending (bytes that are not frames: dropped and counted, but activity).
      const busy = yield* connectTo(yield* tcpPort(a))
      const talker = yield* Effect.forkChild(Effect.forever(Effect.sync(() => busy.socket.write(new Uint8Array([0]))).pipe(Effect.andThen(Effect.sleep("50 millis")))))
      yield* Effect.promise(() => quiet.closed)
      assert.isFalse(yield* isClosed(busy))
      yield* Fiber.interrupt(talker)
      // Outbound: after a send, the connection is reused while busy and reopened after it idled out.
      const atB = yield* collect(b, 2)
      yield* a.sendTo(peer!, "x", "one")
      assert.strictEqual((yield* a.stats).connectionsOpened, 1)
      yield* Effect.sleep("800 millis")
      yield* a.sendTo(peer!, "x", "two")
      assert.deepStrictEqual((yield* Fiber.join(atB)).map((m) => m.text), ["one", "two"])
      assert.strictEqual((yield* a.stats).connectionsOpened, 2)
    }))

  it.live("connections past maxConnections are closed at once and counted", () =>
    Effect.gen(function*() {
      const m = yield* member({ name: "crowded", ...where, maxConnections: 2 })
      const port = yield* tcpPort(m)
      const first = yield* connectTo(port)
      const second = yield* connectTo(port)
      const third = yield* connectTo(port)
      yield* Effect.promise(() => third.closed)
      yield* eventually(m.stats, (s) => s.drops["too-many-connections"] === 1)
      assert.isFalse(yield* isClosed(first))
      assert.isFalse(yield* isClosed(second))
    }))
})
