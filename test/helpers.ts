import dgram from "node:dgram"
import { Context, Duration, Effect, Exit, type Fiber, Layer, Schedule, Scope, Stream } from "effect"
import { Cluster, type ClusterConfigInput, ClusterLive, ClusterTest, type Message, type MemoryNetwork } from "cluster-comm"

/** Joins a member on real sockets for the rest of the test's scope; returns its API. */
export const member = (config: ClusterConfigInput): Effect.Effect<Cluster["Service"], unknown, Scope.Scope> =>
  Layer.build(ClusterLive(config)).pipe(Effect.map((ctx) => Context.get(ctx, Cluster)))

/** A member in a scope of its own, closed (leave sent) when `leave` runs, or at the test's end. */
export const leavable = (config: ClusterConfigInput) =>
  Effect.gen(function*() {
    const own = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(own, Exit.void))
    const cluster = yield* Layer.buildWithScope(ClusterLive(config), own).pipe(
      Effect.map((ctx) => Context.get(ctx, Cluster))
    )
    return { cluster, leave: Scope.close(own, Exit.void) }
  })

/**
 * Polls `read` until `done` holds, up to `within`; fails with the last value
 * otherwise. Used to wait for network events, never to assert timings.
 */
export const eventually = <A, E, R>(
  read: Effect.Effect<A, E, R>,
  done: (a: A) => boolean,
  within: Duration.Input = "5 seconds"
): Effect.Effect<A, E | Error, R> =>
  read.pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: done }),
    Effect.timeoutOrElse({
      duration: within,
      orElse: () =>
        read.pipe(Effect.flatMap((last) => Effect.fail(new Error(`not reached within ${Duration.format(Duration.fromInputUnsafe(within))}: ${JSON.stringify(last, (_, v) => typeof v === "bigint" ? String(v) : v)}`))))
    })
  )

/** A multicast port and group per test file, so files running in parallel never meet. */
export const testCluster = (n: number) => ({ port: 23100 + n, address: `239.77.0.${n}` })

/** A member on an in-memory network (see ClusterTest), for the rest of the test's scope. */
export const memberOn = (network: MemoryNetwork, config: string | ClusterConfigInput, address?: string) =>
  Layer.build(ClusterTest(network, config, address === undefined ? {} : { address })).pipe(
    Effect.map((ctx) => Context.get(ctx, Cluster))
  )

/** Starts collecting a member's next `n` messages; subscribed when this returns. */
export const collect = (
  cluster: { readonly messages: Stream.Stream<Message> },
  n: number
): Effect.Effect<Fiber.Fiber<Array<Message>>> =>
  Effect.gen(function*() {
    const fiber = yield* cluster.messages.pipe(Stream.take(n), Stream.runCollect, Effect.forkChild)
    // The child subscribes when it first runs: let it.
    yield* Effect.yieldNow
    return fiber
  })

/** A raw udp socket that sends to the group through loopback with TTL 0, as a member would. */
export const rawMulticast = Effect.acquireRelease(
  Effect.callback<dgram.Socket>((resume) => {
    const s = dgram.createSocket("udp4")
    s.bind(0, "127.0.0.1", () => {
      s.setMulticastInterface("127.0.0.1")
      s.setMulticastTTL(0)
      resume(Effect.succeed(s))
    })
  }),
  (s) => Effect.sync(() => s.close())
)
