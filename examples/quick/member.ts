/**
 * The Tcl package's quick example, one member a process:
 *   service_one, service_two: print what they receive with op "C".
 *   service_three: waits to know the other two, lists them, broadcasts
 *   "Hello, Foo!" to everyone and sends "Hello, Bar!" to service_one alone.
 * Run all three with `npm run demo`.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import { Cluster, ClusterLive, HookPoint } from "cluster-comm"

const name = process.argv[2] ?? "service_three"
const port = Number(process.env.CLUSTER_COMM_PORT ?? 23000)

const main = Effect.gen(function*() {
  // react to every message with op "C"
  yield* Cluster.hook(HookPoint.op("C", "receive"), (msg) =>
    Effect.sync(() => {
      console.log(`${name} received "${msg.text}" from ${msg.from.name} by ${msg.protocol}`)
      return msg
    }))
  console.log(`${name} joined as ${(yield* Cluster.self).id}`)
  if (name !== "service_three") return yield* Effect.never

  // Discovery takes one round trip; wait (bounded) until both peers are known.
  const services = yield* Cluster.services.pipe(
    Effect.repeat({
      schedule: Schedule.spaced("10 millis"),
      until: (all) => ["service_one", "service_two"].every((n) => all.some((s) => s.name === n))
    }),
    Effect.timeout("5 seconds")
  )
  console.log(`${name} sees ${services.map((s) => s.name).sort().join(", ")}`)
  console.log(`${name} ips ${(yield* Cluster.ips).join(", ")}`)

  yield* Cluster.broadcast("C", "Hello, Foo!")
  const one = yield* Cluster.resolve("service_one")
  const [delivery] = yield* Cluster.sendTo(one, "C", "Hello, Bar!")
  console.log(`${name} sent to ${delivery!.service.name} by ${delivery!.protocol}`)
  // Give the datagram a moment before leaving; the leave tells the others at once.
  yield* Effect.sleep("200 millis")
})

main.pipe(Effect.provide(ClusterLive({ name, port })), NodeRuntime.runMain)
