/**
 * The `cluster-comm` command: see a cluster and talk to it without writing code.
 *
 *   cluster-comm members [--json]         who is there
 *   cluster-comm watch                    found / updated / lost, as they happen
 *   cluster-comm send <target> <op> <data>
 *   cluster-comm broadcast <op> <data>
 *   cluster-comm query <target> <op> <data>
 *   cluster-comm doctor                   what is wrong with this host's setup (multicast, Redis, seeds)
 *
 * Every configuration option is a flag (--name, --port, --address, --remote,
 * --interface, --secret-file, --redis, --seeds, --no-multicast, ...). Exit codes: 0 done, 1 it failed (nothing
 * found, a send failed, a check failed), 2 bad usage or configuration. Errors
 * are one line on stderr.
 */
import { readFileSync } from "node:fs"
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Console, Context, Data, Effect, Layer, Logger, Option, Schedule, Stream } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { interfaceAddress } from "../internal/host.ts"
import { type Check, checkRedis, checkSeeds } from "./doctor.ts"
import { ClusterLive } from "../layers/ClusterLive.ts"
import type { ClusterConfigInput } from "../schema/Config.ts"
import type { Service } from "../schema/Service.ts"
import { Cluster } from "../services/Cluster.ts"

/** A failure the command reports in one line, with its exit code. */
class Fail extends Data.TaggedError("Fail")<{ readonly message: string; readonly code: number }> {}
const fail = (message: string, code = 1) => new Fail({ message, code })

const config = {
  name: Flag.String("name").pipe(Flag.withDescription("this member's name (default: cli-<pid>)"), Flag.optional),
  port: Flag.Int("port").pipe(Flag.withDescription("the cluster's UDP port (default 23000)"), Flag.optional),
  address: Flag.String("address").pipe(Flag.withDescription("the multicast group (default 230.230.230.230)"), Flag.optional),
  remote: Flag.Int("remote").pipe(Flag.withDescription("multicast TTL: 0 this host only (default), above 0 the LAN"), Flag.optional),
  interface: Flag.String("interface").pipe(Flag.withDescription("with --remote: the interface, by name or address"), Flag.optional),
  secretFile: Flag.String("secret-file").pipe(Flag.withDescription("a file holding the cluster's secret"), Flag.optional),
  heartbeat: Flag.String("heartbeat").pipe(Flag.withDescription("beat interval, e.g. \"1 second\""), Flag.optional),
  ttl: Flag.String("ttl").pipe(Flag.withDescription("how long an unheard service is kept, e.g. \"3 seconds\""), Flag.optional),
  protocols: Flag.String("protocols").pipe(Flag.withDescription("direct protocols in order, e.g. tcp,udp"), Flag.optional),
  tags: Flag.String("tags").pipe(Flag.withDescription("this member's tags, comma separated"), Flag.optional),
  allow: Flag.String("allow").pipe(Flag.withDescription("networks accepted with --remote, e.g. 10.1.0.0/16,10.2.0.0/16"), Flag.optional),
  redis: Flag.String("redis").pipe(Flag.withDescription("discovery through Redis too, e.g. redis://user:pass@host:6379"), Flag.optional),
  namespace: Flag.String("namespace").pipe(Flag.withDescription("with --redis: the namespace the cluster's keys live under"), Flag.optional),
  seeds: Flag.String("seeds").pipe(Flag.withDescription("members to probe by unicast, e.g. 10.0.0.5:23000,cluster.svc.local:23000"), Flag.optional),
  seedPort: Flag.Int("seed-port").pipe(Flag.withDescription("the fixed udp port this member answers seed probes on"), Flag.optional),
  noMulticast: Flag.Boolean("no-multicast").pipe(Flag.withDescription("no multicast beacons (networks without multicast)"), Flag.withDefault(false)),
  advertise: Flag.String("advertise").pipe(Flag.withDescription("the address peers beyond the group reach this member at"), Flag.optional),
  wait: Flag.Int("wait").pipe(Flag.withDescription("milliseconds to listen before answering (default 500)"), Flag.withDefault(500))
}

type Flags = { readonly [K in keyof typeof config]: (typeof config)[K] extends Flag.Flag<infer A> ? A : never }

const some = <A>(o: Option.Option<A>) => Option.getOrUndefined(o)
const list = (o: Option.Option<string>) => Option.isSome(o) ? o.value.split(",").map((x) => x.trim()).filter(Boolean) : undefined

const configOf = (f: Flags): Effect.Effect<ClusterConfigInput, Fail> =>
  Effect.try({
    try: () => {
      const secretFile = some(f.secretFile)
      const c: Record<string, unknown> = {
        name: some(f.name) ?? `cli-${process.pid}`,
        port: some(f.port),
        address: some(f.address),
        remote: some(f.remote),
        interface: some(f.interface),
        heartbeat: some(f.heartbeat),
        ttl: some(f.ttl),
        secret: secretFile === undefined ? undefined : readFileSync(secretFile, "utf8").trim(),
        protocols: list(f.protocols),
        tags: list(f.tags),
        allow: list(f.allow),
        redis: Option.isSome(f.redis)
          ? Option.isSome(f.namespace) ? { url: f.redis.value, namespace: f.namespace.value } : f.redis.value
          : undefined,
        seeds: list(f.seeds),
        seedPort: some(f.seedPort),
        multicast: f.noMulticast ? false : undefined,
        advertise: some(f.advertise)
      }
      for (const k of Object.keys(c)) if (c[k] === undefined) delete c[k]
      return c as ClusterConfigInput
    },
    catch: (e) => fail(`cannot read the secret file: ${(e as Error).message}`, 2)
  })

/** Joins with the flags' configuration, runs `body` with the member, leaves. */
const withMember = <A>(f: Flags, body: (cluster: Cluster["Service"]) => Effect.Effect<A, Fail>) =>
  Effect.gen(function*() {
    const c = yield* configOf(f)
    return yield* Effect.scoped(
      Layer.build(ClusterLive(c)).pipe(
        Effect.mapError((e) => fail(e.message, e.reason === "InvalidConfig" ? 2 : 1)),
        Effect.flatMap((ctx) => body(Context.get(ctx, Cluster)))
      )
    )
  })

/** Waits (up to `--wait`) until a resolve term matches. */
const resolved = (cluster: Cluster["Service"], target: string, waitMs: number) =>
  cluster.resolve(target).pipe(
    Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (s) => s.length > 0 }),
    Effect.timeoutOption(`${Math.max(waitMs, 50)} millis`),
    Effect.flatMap((found) =>
      Option.isSome(found) && found.value.length > 0
        ? Effect.succeed(found.value)
        : Effect.fail(fail(`no service matches "${target}" (waited ${waitMs} ms)`))
    )
  )

const ago = (t: number) => `${Math.max(0, Math.round((Date.now() - t) / 100) / 10)}s ago`

const row = (s: Service) => ({
  name: s.name,
  id: s.id,
  address: s.address,
  local: s.local ? "yes" : "no",
  protocols: s.protocols.map((p) => `${p.protocol}:${p.port}`).join(" "),
  tags: s.tags.join(","),
  sources: s.sources.join(",") + (s.stale ? " (stale)" : ""),
  seen: ago(s.lastSeen)
})

/** A plain-text table, columns as wide as their widest cell. */
const table = (rows: ReadonlyArray<Record<string, string>>): string => {
  if (rows.length === 0) return "(no services)"
  const keys = Object.keys(rows[0]!)
  const width = keys.map((k) => Math.max(k.length, ...rows.map((r) => r[k]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(width[i]!)).join("  ").trimEnd()
  return [line(keys.map((k) => k.toUpperCase())), ...rows.map((r) => line(keys.map((k) => r[k]!)))].join("\n")
}

const json = Flag.Boolean("json").pipe(Flag.withDescription("print JSON for scripts"), Flag.withDefault(false))

const members = Command.make("members", { ...config, json }, (f) =>
  withMember(f, (cluster) =>
    Effect.gen(function*() {
      // Discovery takes one round trip; `--wait` covers it with room to spare.
      yield* Effect.sleep(`${f.wait} millis`)
      const services = [...(yield* cluster.services)].sort((a, b) => a.id.localeCompare(b.id))
      yield* Console.log(f.json ? JSON.stringify(services, null, 2) : table(services.map(row)))
    }))).pipe(Command.withDescription("List the services of the cluster"))

const watch = Command.make("watch", { ...config }, (f) =>
  withMember(f, (cluster) => {
    // In a terminal: the table, redrawn on every event, over the last events;
    // otherwise (a pipe, a file): one line an event, for scripts.
    const live = process.stdout.isTTY === true
    const recent: Array<string> = []
    return cluster.events.pipe(
      Stream.runForEach((e) =>
        Effect.gen(function*() {
          const line = `${new Date().toISOString()} ${e._tag.replace("Service", "").toLowerCase()} ${e.service.id} ${e.service.address}` +
            (e._tag === "ServiceLost" ? ` (${e.why})` : "")
          if (!live) return yield* Console.log(line)
          recent.push(line)
          if (recent.length > 10) recent.shift()
          const services = [...(yield* cluster.services)].sort((a, b) => a.id.localeCompare(b.id))
          process.stdout.write(`\x1b[2J\x1b[H${table(services.map(row))}\n\n${recent.join("\n")}\n`)
        })
      )
    )
  })).pipe(Command.withDescription("Show services found, updated and lost, as they happen (Ctrl-C ends)"))

const target = Argument.String("target").pipe(Argument.withDescription("a name, id, tag, host id or address"))
const op = Argument.String("op").pipe(Argument.withDescription("the op, 1 to 32 bytes"))
const data = Argument.String("data").pipe(Argument.withDescription("the data, as text"))

const send = Command.make("send", { ...config, target, op, data }, (f) =>
  withMember(f, (cluster) =>
    Effect.gen(function*() {
      const services = yield* resolved(cluster, f.target, f.wait)
      const deliveries = yield* cluster.sendTo(services, f.op, f.data).pipe(Effect.mapError((e) => fail(e.message)))
      for (const d of deliveries) yield* Console.log(`sent ${f.op} to ${d.service.id} by ${d.protocol}`)
    }))).pipe(Command.withDescription("Send an op to the services a target resolves to"))

const broadcast = Command.make("broadcast", { ...config, op, data }, (f) =>
  withMember(f, (cluster) =>
    cluster.broadcast(f.op, f.data).pipe(
      Effect.mapError((e) => fail(e.message)),
      Effect.andThen(Console.log(`broadcast ${f.op} by udp multicast`))
    ))).pipe(Command.withDescription("Send an op to every member"))

const query = Command.make("query", {
  ...config,
  target,
  op,
  data,
  timeout: Flag.Int("timeout").pipe(Flag.withDescription("milliseconds to wait for answers (default 2000)"), Flag.withDefault(2000))
}, (f) =>
  withMember(f, (cluster) =>
    Effect.gen(function*() {
      const services = yield* resolved(cluster, f.target, f.wait)
      const result = yield* cluster.queryAll({ target: services, op: f.op, data: f.data, timeout: `${f.timeout} millis` }).pipe(
        Effect.mapError((e) => fail(e.message))
      )
      yield* Console.log(`query ${f.op} to ${services.length} service(s)`)
      for (const r of result.responses.values()) yield* Console.log(`response from ${r.service.id}: ${r.text}`)
      for (const e of result.errors.values()) yield* Console.log(`error from ${e.service.id}: ${e.message}`)
      for (const m of result.missing) yield* Console.log(`no answer from ${m.id}`)
      if (!result.complete || result.errors.size > 0) return yield* fail("not every service answered", 1)
    }))).pipe(Command.withDescription("Ask the services a target resolves to, and print their answers"))

const doctor = Command.make("doctor", { ...config }, (f) =>
  Effect.gen(function*() {
    const c = yield* configOf(f)
    const remote = (c.remote ?? 0) > 0
    const multicast = c.multicast !== false
    const lines: Array<Check> = []
    const iface = remote ? interfaceAddress(c.interface) : "127.0.0.1"
    if (multicast) {
      lines.push([iface !== undefined, iface === undefined
        ? `no usable interface${c.interface ? ` named ${c.interface}` : ""} for multicast`
        : `multicast goes through ${iface}${remote ? "" : " (loopback: this host only, TTL 0)"}`])
    }
    if (c.redis !== undefined) {
      const { url, namespace } = typeof c.redis === "string" ? { url: c.redis, namespace: undefined } : c.redis
      lines.push(...yield* checkRedis(url, namespace ?? "default", c.address ?? "230.230.230.230", c.port ?? 23000))
    }
    if (c.seeds !== undefined) lines.push(...yield* checkSeeds(c.seeds))
    const others = Object.entries((yield* Effect.promise(() => import("node:os"))).networkInterfaces())
      .flatMap(([name, addrs]) => (addrs ?? []).filter((a) => a.family === "IPv4" && !a.internal).map((a) => `${name} ${a.address}`))
    if (others.length > 1) lines.push([true, `several interfaces: ${others.join(", ")}; pick one with --interface`])
    const inContainer = (() => {
      try {
        return readFileSync("/proc/1/cgroup", "utf8").match(/docker|kubepods|containerd|lxc/) !== null ||
          readFileSync("/proc/self/mountinfo", "utf8").includes("/docker/")
      } catch {
        return false
      }
    })()
    if (inContainer) lines.push([true, "running inside a container: multicast reaches other hosts only with host networking"])
    // The self-test: join, and hear our own beacon come back.
    const heard = yield* withMember(f, (cluster) =>
      Effect.sleep("300 millis").pipe(Effect.andThen(cluster.stats), Effect.map((s) => (s.drops.own ?? 0) > 0))
    ).pipe(Effect.catch((e: Fail) => Effect.sync(() => {
      lines.push([false, e.message.includes("in use") || e.message.includes("EADDRINUSE")
        ? `port ${c.port ?? 23000} is held by a program that does not share it (SO_REUSEPORT)`
        : e.message])
      return undefined
    })))
    if (heard !== undefined && multicast) {
      lines.push([heard, heard
        ? "joined the group and heard its own beacon"
        : "joined, but did not hear its own beacon: multicast is dropped (a firewall, or no multicast route)"])
    }
    for (const [ok, text] of lines) yield* Console.log(`${ok ? "ok  " : "FAIL"} ${text}`)
    if (lines.some(([ok]) => !ok)) return yield* fail("some checks failed")
  })).pipe(Command.withDescription("Check this host's multicast setup and say what is wrong"))

const root = Command.make("cluster-comm").pipe(
  Command.withDescription("See and talk to a cluster-comm cluster"),
  Command.withSubcommands([members, watch, send, broadcast, query, doctor])
)

const cli = Command.run(root, { version: "0.1.0" })

cli.pipe(
  Effect.catch((e: unknown) =>
    Effect.sync(() => {
      // One line, no stack: for people and for scripts.
      const f = e instanceof Fail ? e : fail(String((e as { message?: string })?.message ?? e), 2)
      process.stderr.write(`error: ${f.message}\n`)
      process.exitCode = f.code
    })
  ),
  Effect.provide(NodeServices.layer),
  // stdout is the command's output (tables, JSON); the library's log lines go to stderr.
  Effect.provideService(Logger.LogToStderr, true),
  NodeRuntime.runMain
)
