/**
 * A member process driven by tests: joins with the configuration given as JSON
 * in argv[2], prints what happens as JSON lines on stdout, and takes commands
 * as JSON lines on stdin. Runs anywhere a test puts it (e.g. in a network
 * namespace with `ip netns exec`).
 *
 * Out: {"joined": self} {"found": id} {"lost": id, "why"} {"message": {op, text, from, protocol}}
 *      {"reply": n, "ok": result} {"reply": n, "error": tag}
 * In:  {"n": 1, "cmd": "broadcast", "op": "C", "data": "x"}
 *      {"n": 2, "cmd": "sendTo", "target": "name", "op": "C", "data": "x"}
 *      {"n": 3, "cmd": "services"}    {"n": 4, "cmd": "stats"}    {"n": 5, "cmd": "fail"}
 *      {"n": 6, "cmd": "sendToFake", "target": "name", "op": "C", "data": "x", "tcpPort": 1}
 *      {"n": 7, "cmd": "queryAll", "target": "name", "op": "Q", "data": "x"}
 *      {"n": 8, "cmd": "respond", "op": "Q", "data": "answer"}    {"n": 9, "cmd": "sources"}
 */
import { createInterface } from "node:readline"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Stream } from "effect"
import { Cluster, type ClusterConfigInput, ClusterLive, HookPoint } from "cluster-comm"

const config = JSON.parse(process.argv[2] ?? "{}") as ClusterConfigInput
const say = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`)

type Command = {
  readonly n: number
  readonly cmd: string
  readonly op?: string
  readonly data?: string
  readonly target?: string
  readonly tcpPort?: number
}

/** The program fails on purpose (the `fail` command): the member must still leave. */
class Deliberate {
  readonly _tag = "Deliberate"
}

const run = (c: Command): Effect.Effect<unknown, { readonly _tag: string }, Cluster> => {
  switch (c.cmd) {
    case "broadcast":
      return Cluster.broadcast(c.op!, c.data!).pipe(Effect.as("broadcast"))
    case "sendTo":
      return Cluster.sendTo(c.target!, c.op!, c.data!).pipe(
        Effect.map((ds) => ds.map((d) => ({ id: d.service.id, protocol: d.protocol })))
      )
    case "stats":
      return Cluster.stats
    case "sendToFake":
      // The target as resolved, but claiming a tcp port first (e.g. a dead one).
      return Effect.gen(function*() {
        const [s] = yield* Cluster.resolve(c.target!)
        if (s === undefined) return yield* Effect.fail({ _tag: "ServiceNotFound" } as const)
        const fake = { ...s, protocols: [{ protocol: "tcp" as const, port: c.tcpPort! }, ...s.protocols.filter((p) => p.protocol !== "tcp")] }
        const ds = yield* Cluster.sendTo(fake, c.op!, c.data!)
        return ds.map((d) => ({ id: d.service.id, protocol: d.protocol }))
      })
    case "services":
      return Cluster.services.pipe(Effect.map((ss) =>
        ss.map((s) => ({
          id: s.id,
          name: s.name,
          address: s.address,
          local: s.local,
          tags: s.tags,
          protocols: s.protocols.map((p) => p.protocol),
          sources: s.sources,
          stale: s.stale
        }))
      ))
    case "sources":
      return Cluster.sources
    case "queryAll":
      return Cluster.queryAll({ target: c.target!, op: c.op!, data: c.data!, timeout: "3 seconds" }).pipe(
        Effect.map((r) => ({
          responses: [...r.responses.values()].map((x) => [x.service.name, x.text]),
          errors: [...r.errors.values()].map((x) => [x.service.name, x.message]),
          missing: r.missing.map((s) => s.name)
        }))
      )
    case "respond":
      // Answers queries with this op: the data given, then what was asked.
      return Cluster.hook(HookPoint.query(c.op!), (q) => Effect.succeed(`${c.data} (asked: ${q.text})`)).pipe(Effect.as("responding"))
    default:
      return Effect.fail({ _tag: "UnknownCommand" } as const)
  }
}

const main = Effect.gen(function*() {
  const cluster = yield* Cluster
  yield* cluster.events.pipe(
    Stream.runForEach((e) =>
      Effect.sync(() => {
        if (e._tag === "ServiceFound") say({ found: e.service.id, address: e.service.address, sources: e.service.sources })
        else if (e._tag === "ServiceLost") say({ lost: e.service.id, why: e.why })
      })
    ),
    Effect.forkChild
  )
  yield* cluster.messages.pipe(
    Stream.runForEach((m) =>
      Effect.sync(() => say({ message: { op: m.op, text: m.text, from: m.from.id, protocol: m.protocol } }))
    ),
    Effect.forkChild
  )
  yield* Effect.sleep("10 millis") // subscriptions start before we announce ourselves
  say({ joined: yield* cluster.self })
  const lines = createInterface({ input: process.stdin })
  yield* Stream.fromAsyncIterable(lines, () => "stdin closed").pipe(
    Stream.runForEach((line) => {
      const c = JSON.parse(line) as Command
      if (c.cmd === "fail") return Effect.die(new Deliberate())
      return run(c).pipe(
        Effect.provideService(Cluster, cluster),
        Effect.match({
          onSuccess: (ok) => say({ reply: c.n, ok }),
          onFailure: (e) => say({ reply: c.n, error: (e as { _tag?: string })._tag ?? String(e) })
        })
      )
    }),
    Effect.orDie
  )
})

main.pipe(Effect.provide(ClusterLive(config)), NodeRuntime.runMain)
