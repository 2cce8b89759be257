import { Effect, Schedule } from "effect"
import { Cluster } from "cluster-comm"

/**
 * The quick example as a program: wait to know service_one and service_two,
 * broadcast to everyone, send to service_one alone. It names no layer: the
 * tests run it on the in-memory network and on real sockets.
 */
export const quickProgram = Effect.gen(function*() {
  const services = yield* Cluster.services.pipe(
    Effect.repeat({
      schedule: Schedule.spaced("5 millis"),
      until: (all) => ["service_one", "service_two"].every((n) => all.some((s) => s.name === n))
    }),
    Effect.timeout("5 seconds")
  )
  yield* Cluster.broadcast("C", "Hello, Foo!")
  const one = yield* Cluster.resolve("service_one")
  const [delivery] = yield* Cluster.sendTo(one, "C", "Hello, Bar!")
  return {
    seen: services.map((s) => s.name).sort(),
    ips: yield* Cluster.ips,
    delivery: delivery!
  }
})
