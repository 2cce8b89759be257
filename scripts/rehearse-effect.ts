/**
 * The same rehearsal as rehearse.ts on the Effect entry (`dist/index.mjs` and
 * its chunks, Effect itself external): two members of one process join a
 * host-only cluster (loopback, TTL 0), find each other, exchange a message and
 * a query, and leave. Run under NODE_V8_COVERAGE, it tells the build which of
 * the entry's functions a member runs.
 *
 * Usage: node scripts/rehearse-effect.ts <dist/index.mjs>; exits 0 once done, 1 if
 * the members did not meet within 5 s.
 */
import { Deferred, Effect, Fiber, Schedule, Stream } from "effect"
import { pathToFileURL } from "node:url"
import { rehearsalConfig } from "./rehearsal.ts"

const entry = process.argv[2]!
const { Cluster, ClusterLive, HookPoint } = (await import(pathToFileURL(entry).href)) as typeof import("../src/index.ts")
const member = (name: string) => ClusterLive(rehearsalConfig(name))

/** Until this member knows the other. */
const meet = (other: string) =>
  Cluster.services.pipe(Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (all) => all.some((s) => s.name === other) }))

const program = Effect.gen(function*() {
  const met = yield* Deferred.make<void>()
  const done = yield* Deferred.make<void>()
  const b = Effect.gen(function*() {
    yield* Cluster.hook(HookPoint.query("Q"), (q) => Effect.succeed(`re: ${q.text}`))
    const heard = yield* Cluster.messages.pipe(Stream.take(1), Stream.runDrain, Effect.forkChild)
    yield* meet("rehearsal-a")
    yield* Deferred.succeed(met, undefined)
    yield* Fiber.join(heard)
    yield* Deferred.await(done)
  }).pipe(Effect.provide(member("rehearsal-b")))
  const a = Effect.gen(function*() {
    yield* meet("rehearsal-b")
    yield* Deferred.await(met)
    yield* Cluster.sendTo(yield* Cluster.resolve("rehearsal-b"), "C", "hello")
    yield* Cluster.broadcast("C", "to all")
    yield* Cluster.queryAll({ target: "rehearsal-b", op: "Q", data: "ping", timeout: "1 second" })
    yield* Deferred.succeed(done, undefined)
  }).pipe(Effect.provide(member("rehearsal-a")))
  yield* Effect.all([a, b], { concurrency: 2 })
})

const exit = await Effect.runPromiseExit(program.pipe(Effect.timeout("5 seconds")))
process.exit(exit._tag === "Success" ? 0 : 1)
