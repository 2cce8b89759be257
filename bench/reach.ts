/**
 * The reach section: N members (processes of 50) meeting through one
 * redis-server, next to the same N on multicast in the same run. For each:
 * time until all know all after the last process started, a joiner's time
 * to know all and until all know it, a crash (SIGKILL) until all have lost
 * it, CPU and memory a member; for Redis also its commands a second, script
 * calls a member a heartbeat and redis-server's CPU (from INFO).
 */
import { type ChildProcess, execFileSync, spawn as spawnProcess } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

type Msg = Record<string, any>
interface Child {
  readonly child: ChildProcess
  readonly next: (key: string, timeoutMs?: number) => Promise<Msg>
  readonly send: (m: Msg) => void
}
type Spawn = (file: string, args: ReadonlyArray<string>, extraArgv?: ReadonlyArray<string>) => Child

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer()
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
  })

export const hasRedisServer = (): boolean => {
  try {
    execFileSync("redis-server", ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
}

/** Servers this section started, ended by their PIDs if the bench is interrupted. */
export const servers = new Set<ChildProcess>()

/** A redis-server of the bench's own on loopback, ended by its PID. */
const startRedis = async () => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "cc-bench-redis-"))
  const child = spawnProcess("redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--maxclients", "10100"
  ], { stdio: ["ignore", "pipe", "inherit"] })
  servers.add(child)
  child.once("exit", () => servers.delete(child))
  await new Promise<void>((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 10_000)
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString()
      if (out.includes("Ready to accept connections")) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  const info = (): Record<string, string> => {
    const text = execFileSync("redis-cli", ["-p", String(port), "INFO", "all"], { encoding: "utf8" })
    return Object.fromEntries(text.split("\r\n").filter((l) => l.includes(":")).map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1)]))
  }
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null) return resolve()
      child.once("exit", () => {
        rmSync(dir, { recursive: true, force: true })
        resolve()
      })
      child.kill("SIGKILL") // our own child, by its PID
    })
  const url = `redis://127.0.0.1:${port}`
  /** Subscribes to the cluster's events; `at` resolves when a join of `name` is published. */
  const joinEvent = async (name: string) => {
    const { createClient } = await import("redis")
    const client = createClient({ url })
    await client.connect()
    let resolve: (at: number) => void = () => {}
    const at = new Promise<number>((r) => (resolve = r))
    await client.pSubscribe("cluster-comm:*:events", (message) => {
      const [, kind, , descriptor] = message.split(" ")
      if (kind === "join" && Buffer.from(descriptor ?? "", "base64").includes(name)) {
        resolve(Date.now())
        void client.close()
      }
    })
    return { at }
  }
  return { url, info, stop, joinEvent }
}

/** Calls by command over a window, from INFO's commandstats (commands inside scripts included). */
const commandCalls = (before: Record<string, string>, after: Record<string, string>) =>
  Object.fromEntries(
    Object.keys(after).filter((k) => k.startsWith("cmdstat_")).map((k) => [
      k.slice(8),
      Number(/calls=(\d+)/.exec(after[k]!)?.[1] ?? 0) - Number(/calls=(\d+)/.exec(before[k] ?? "")?.[1] ?? 0)
    ]).filter(([, n]) => (n as number) > 0)
  )
const evalshaCalls = (info: Record<string, string>) => Number(/calls=(\d+)/.exec(info.cmdstat_evalsha ?? "")?.[1] ?? 0)
const redisCpuSeconds = (info: Record<string, string>) => Number(info.used_cpu_sys) + Number(info.used_cpu_user)

export interface ReachRun {
  readonly mode: "redis" | "multicast"
  readonly members: number
  readonly processes: number
  /** From the last process's start until every member knows all. */
  readonly allKnowAllMs: number
  /** A joiner (its own process): its layer's start until it knows all. */
  readonly joinerKnowsAllMs: number
  /** The joiner's start until every member has found it. */
  readonly joinKnownToAllMs: number
  /** For Redis: from the joiner's join event leaving Redis until every member has found it (the engine's part). */
  readonly joinKnownToAllAfterRegistrationMs?: number
  /** SIGKILL of a member until every member has lost it. */
  readonly crashNoticedMs: number
  readonly cpuMsPerMemberPerBeat: number
  readonly heapPerMemberKiB: number
  readonly rssPerMemberKiB: number
  readonly fewestKnown: number
  readonly redis?: {
    readonly commandsPerSec: number
    readonly scriptCallsPerMemberPerBeat: number
    readonly cpuShareOfCore: number
    readonly usedMemoryBytes: number
    /** Calls by command in the steady-state window. */
    readonly calls: Record<string, number>
  }
}

export const reach = async (spawn: Spawn, stop: (list: ReadonlyArray<Child>) => Promise<void>, mode: "redis" | "multicast", n: number, perProcess: number, port: number, seconds: number): Promise<ReachRun> => {
  const heartbeatMs = 1000
  const redis = mode === "redis" ? await startRedis() : undefined
  try {
    const host = (prefix: string, count: number, expect: number) =>
      spawn("reach-host.ts", [prefix, String(count), String(expect), String(port), String(heartbeatMs), mode, redis?.url ?? ""], ["--expose-gc"])
    const hosts: Array<Child> = []
    for (let i = 0; i * perProcess < n; i++) hosts.push(host(`h${i}`, Math.min(perProcess, n - i * perProcess), n - 1))
    const starts = await Promise.all(hosts.map((h) => h.next("started", 60_000)))
    const converged = await Promise.all(hosts.map((h) => h.next("converged", 180_000)))
    const allKnowAllMs = Math.max(...converged.map((c) => c.at)) - Math.max(...starts.map((s) => s.at))
    await sleep(2 * heartbeatMs) // past the join storm

    // Steady state: CPU and memory a member, Redis' own counters.
    const sample = () =>
      Promise.all(hosts.map((h) => {
        h.send({ sample: true })
        return h.next("sampled")
      }))
    const before = await sample()
    const infoBefore = redis?.info()
    const t0 = performance.now()
    await sleep(seconds * 1000)
    const wallMs = performance.now() - t0
    const infoAfter = redis?.info()
    const after = await sample()
    const cpuMs = after.reduce((sum, s, i) => sum + (s.cpu.user + s.cpu.system - before[i]!.cpuAfter.user - before[i]!.cpuAfter.system) / 1000, 0)

    // A joiner: its time to know all, and until all know it (from its start, and
    // from the moment its registration's event left Redis, seen by a subscriber here).
    for (const h of hosts) h.send({ watch: "x-join-0" })
    const registered = redis === undefined ? undefined : await redis.joinEvent("x-join-0")
    const joiner = host("x-join", 1, n)
    const joinerStarted = await joiner.next("started", 60_000)
    const joinerDone = await joiner.next("converged", 60_000)
    const seen = await Promise.all(hosts.map((h) => h.next("seen", 60_000)))
    const joinKnownToAllMs = Math.max(...seen.map((s) => s.at)) - joinerStarted.at
    const registeredAt = registered === undefined ? undefined : await registered.at

    // A crash: the joiner killed (SIGKILL) until every member has lost it.
    for (const h of hosts) h.send({ watchLost: "x-join-0" })
    await sleep(300)
    const killedAt = Date.now()
    joiner.child.kill("SIGKILL") // our own child, by its PID
    const lostAll = await Promise.all(hosts.map((h) => h.next("lostAll", 60_000)))
    const crashNoticedMs = Math.max(...lostAll.map((l) => l.at)) - killedAt

    await stop(hosts)
    const sum = (xs: ReadonlyArray<Msg>, k: string) => xs.reduce((t, s) => t + s[k], 0)
    return {
      mode,
      members: n,
      processes: hosts.length,
      allKnowAllMs,
      joinerKnowsAllMs: joinerDone.at - joinerStarted.at,
      joinKnownToAllMs,
      ...(registeredAt === undefined ? {} : { joinKnownToAllAfterRegistrationMs: Math.max(...seen.map((s) => s.at)) - registeredAt }),
      crashNoticedMs,
      cpuMsPerMemberPerBeat: cpuMs / n / (wallMs / heartbeatMs),
      heapPerMemberKiB: sum(after, "heapUsed") / n / 1024,
      rssPerMemberKiB: sum(after, "rss") / n / 1024,
      fewestKnown: Math.min(...after.map((s) => s.fewestKnown)),
      ...(infoBefore === undefined || infoAfter === undefined ? {} : {
        redis: {
          commandsPerSec: ((Number(infoAfter.total_commands_processed) - Number(infoBefore.total_commands_processed)) * 1000) / wallMs,
          scriptCallsPerMemberPerBeat: (evalshaCalls(infoAfter) - evalshaCalls(infoBefore)) / n / (wallMs / heartbeatMs),
          cpuShareOfCore: ((redisCpuSeconds(infoAfter) - redisCpuSeconds(infoBefore)) * 1000) / wallMs,
          usedMemoryBytes: Number(infoAfter.used_memory),
          calls: commandCalls(infoBefore, infoAfter)
        }
      })
    }
  } finally {
    await redis?.stop()
  }
}
