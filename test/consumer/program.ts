/**
 * A consumer's program, type-checked by test/package.test.ts against the
 * packed package in an empty project (never run there). It uses what a user
 * writes first: the quick example, typed failures, a hook, a query, and the
 * in-memory test layer. It avoids Node's globals: the consumer installs only
 * cluster-comm, effect, @effect/platform-node and typescript.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule, Stream } from "effect"
import { Cluster, ClusterLive, ClusterTest, HookPoint, HookRejected, MemoryNetwork, type Service } from "cluster-comm"
import { FrameFromBytes } from "cluster-comm/schema"

const quick = Effect.gen(function*() {
  yield* Cluster.hook(HookPoint.op("C", "receive"), (msg) =>
    msg.text.length > 1000 ? Effect.fail(new HookRejected({ point: "op C receive", reason: "too long" })) : Effect.succeed(msg))
  const services: ReadonlyArray<Service> = yield* Cluster.services.pipe(
    Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (all) => all.length >= 2 }),
    Effect.timeout("5 seconds")
  )
  yield* Cluster.broadcast("C", "Hello, Foo!")
  const one = yield* Cluster.resolve("service_one")
  const [delivery] = yield* Cluster.sendTo(one, "C", "Hello, Bar!").pipe(
    Effect.catchTag("SendFailed", (e) => Effect.succeed(e.attempts.map((a) => ({ service: e.service, protocol: a.protocol }))))
  )
  const answers = yield* Cluster.query({ target: "service_two", op: "time", data: "now", timeout: "1 second" }).pipe(
    Stream.filter((e) => e._tag === "QueryResponse"),
    Stream.map((e) => `${e.service.name}: ${e.text}`),
    Stream.runCollect
  )
  return { seen: services.map((s) => s.name), by: delivery?.protocol, answers }
})

export const live = quick.pipe(
  Effect.provide(ClusterLive({ name: "service_three", remote: 0 })),
  Effect.catchTag("JoinError", (e) => Effect.die(`cannot join: ${e.message} (${e.field ?? "no field"})`))
)

export const inMemory = quick.pipe(Effect.provide(ClusterTest(MemoryNetwork.make({ delay: "1 millis" }), "service_three")))

export const decoder = FrameFromBytes

export const main = () => NodeRuntime.runMain(live)
