/**
 * `npm run bench`: discovery time for N separate processes, and sendTo
 * throughput and round trip between two processes, each next to its raw
 * node:net reference measured in the same run. Prints a table and writes
 * bench/results/latest.json. `--quick` runs small counts (the CI smoke run).
 */
import { type ChildProcess, fork, spawn as spawnProcess } from "node:child_process"
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { chartSvg } from "./chart.ts"
import { canRunInstalled, installedStartup } from "./installed.ts"
import { hasRedisServer, reach, type ReachRun, servers } from "./reach.ts"
import { median, percentile } from "./summary.ts"

const quick = process.argv.includes("--quick")
/** `--only discovery|installed|idle|throughput|rtt|scale|reach` runs one section (for profiling). */
const only = process.argv.includes("--only") ? process.argv[process.argv.indexOf("--only") + 1] : undefined
const runs = (section: string) => only === undefined || only === section
const here = (f: string) => fileURLToPath(new URL(f, import.meta.url))
const RUNS = quick ? 1 : 3
const PORT = 23950 + Math.floor(Math.random() * 40)

type Msg = Record<string, any>
const children = new Set<ChildProcess>()
// Interrupted (Ctrl-C, a timeout): end every process we started, by its PID, then stop.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    for (const child of [...children, ...servers]) child.kill("SIGKILL")
    process.exit(130)
  })
}

const spawn = (file: string, args: ReadonlyArray<string>, extraArgv: ReadonlyArray<string> = []) => {
  // BENCH_PROFILE=dir: every child writes a CPU profile there (`--cpu-prof`).
  const profile = process.env.BENCH_PROFILE ? ["--cpu-prof", "--cpu-prof-interval=100", `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : []
  // BENCH_NODE_FLAGS="--log-deopt --logfile=/tmp/v8-%p.log": flags for every child (V8's own, which NODE_OPTIONS refuses).
  profile.push(...(process.env.BENCH_NODE_FLAGS?.split(" ").filter((f) => f !== "") ?? []))
  // Members run from their bundle (`npm run build`), with Node's compile cache:
  // the library as deployed. The raw references need no build. BENCH_SOURCE=1
  // runs the messaging and scale processes from the source instead (to compare).
  const bundled = process.env.BENCH_SOURCE ? file === "member.ts" : file !== "raw.ts"
  // A bundle resolves what it leaves external (`cluster-comm/promise`) as an installed program does, not to the source.
  const resolving = (flags: ReadonlyArray<string>) => bundled ? flags.filter((f) => !f.startsWith("--conditions")) : flags
  const child = fork(bundled ? here(`../dist/bench/${file.replace(/\.ts$/, ".mjs")}`) : here(file), args, {
    stdio: ["ignore", "ignore", "inherit", "ipc"],
    execArgv: [...resolving(process.execArgv), ...profile, ...extraArgv],
    env: {
      ...process.env,
      ...(process.env.NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: resolving(process.env.NODE_OPTIONS.split(" ")).join(" ") }),
      NODE_COMPILE_CACHE: join(tmpdir(), "cluster-comm-bench-cache")
    }
  })
  children.add(child)
  const inbox: Array<Msg> = []
  const waiters: Array<{ key: string; resolve: (m: Msg) => void }> = []
  child.on("message", (m: Msg) => {
    const i = waiters.findIndex((w) => w.key in m)
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(m)
    else inbox.push(m)
  })
  child.on("exit", () => children.delete(child))
  const next = (key: string, timeoutMs = 60_000) =>
    new Promise<Msg>((resolve, reject) => {
      const i = inbox.findIndex((m) => key in m)
      if (i >= 0) return resolve(inbox.splice(i, 1)[0]!)
      const timer = setTimeout(() => reject(new Error(`${file} ${args.join(" ")}: no "${key}" within ${timeoutMs} ms`)), timeoutMs)
      waiters.push({
        key,
        resolve: (m) => {
          clearTimeout(timer)
          resolve(m)
        }
      })
    })
  return { child, next, send: (m: Msg) => child.send(m) }
}

const stop = async (list: ReadonlyArray<{ child: ChildProcess }>) => {
  await Promise.all(
    list.map(({ child }) =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.kill("SIGTERM") // our own child, by its PID
      })
    )
  )
}


// ---- discovery ----

/** N processes started at once: time from the first spawn until the last knows all. */
const discovery = async (n: number, port: number) => {
  const t0 = Date.now()
  const members = Array.from({ length: n }, (_, i) => spawn("member.ts", [`m${i}`, String(n - 1), String(port)]))
  const reports = await Promise.all(members.map((m) => m.next("knowsAllAt")))
  const lastKnows = Math.max(...reports.map((r) => r.knowsAllAt))
  const lastJoin = Math.max(...reports.map((r) => r.joinStartedAt))
  return { members, allKnown: lastKnows - t0, afterLastJoin: lastKnows - lastJoin }
}

/** One more member joining a running cluster: from its join until it knows all. */
const joiner = async (running: number, port: number) => {
  const m = spawn("member.ts", [`j${running}`, String(running), String(port)])
  const r = await m.next("knowsAllAt")
  await stop([m])
  return {
    joinToAll: r.knowsAllAt - r.joinStartedAt,
    // Of that: building the layer (config, sockets, listeners, first beacons), then hearing everyone.
    layerMs: r.joinedAt - r.joinStartedAt,
    // The process's CPU up to knowing everyone: Node's boot, loading the library, joining.
    processCpuMs: (r.cpu.user + r.cpu.system) / 1000
  }
}

/** Node's own start-up cost, for reference: a process that loads nothing. */
const bareNode = async () => {
  const child = spawnProcess(process.execPath, ["-e", "process.send({ cpu: process.cpuUsage() })"], {
    stdio: ["ignore", "ignore", "inherit", "ipc"]
  })
  const cpu = await new Promise<{ user: number; system: number }>((resolve) => child.once("message", (m: any) => resolve(m.cpu)))
  await new Promise((r) => child.once("exit", r))
  return (cpu.user + cpu.system) / 1000
}

/**
 * The raw reference for discovery: N bare Node processes started at once
 * (each loads nothing and says so over IPC): from the first spawn until the
 * last has reported. Start-up alone, on the same cores.
 */
const bareStarts = async (n: number) => {
  const t0 = Date.now()
  const children = Array.from({ length: n }, () =>
    spawnProcess(process.execPath, ["-e", "process.send({ up: Date.now() }, () => process.exit(0))"], {
      stdio: ["ignore", "ignore", "inherit", "ipc"]
    }))
  const ups = await Promise.all(children.map((c) => new Promise<number>((resolve) => c.once("message", (m: any) => resolve(m.up)))))
  await Promise.all(children.map((c) => c.exitCode !== null ? undefined : new Promise((r) => c.once("exit", r))))
  return Math.max(...ups) - t0
}

/** A member with no traffic: its CPU over a few seconds, as a share of one core. */
const idle = async (port: number, seconds: number) => {
  const members = [spawn("member.ts", ["idle-a", "1", String(port)]), spawn("member.ts", ["idle-b", "1", String(port)])]
  await Promise.all(members.map((m) => m.next("knowsAllAt")))
  await new Promise((r) => setTimeout(r, 1000)) // past the join's own work
  const m = members[0]!
  m.send("cpu" as never)
  const a = await m.next("cpuNow")
  await new Promise((r) => setTimeout(r, seconds * 1000))
  m.send("cpu" as never)
  const b = await m.next("cpuNow")
  await stop(members)
  const cpuMs = (b.cpuNow.user + b.cpuNow.system - a.cpuNow.user - a.cpuNow.system) / 1000
  return (100 * cpuMs) / (b.at - a.at)
}

// ---- scale ----

/**
 * Datagrams the kernel dropped for full receive buffers, host-wide (Linux's
 * /proc/net/snmp; undefined elsewhere): a member cannot count these itself.
 */
const kernelUdpDrops = (): number | undefined => {
  try {
    const rows = readFileSync("/proc/net/snmp", "utf8").split("\n").filter((l) => l.startsWith("Udp:"))
    const names = rows[0]!.split(/\s+/)
    return Number(rows[1]!.split(/\s+/)[names.indexOf("RcvbufErrors")])
  } catch {
    return undefined
  }
}

/**
 * N members on one host, `perProcess` to a process on real sockets: time
 * until every member knows all others, then over `seconds` of steady state
 * the CPU each member spends per heartbeat interval, and memory per member.
 */
const scale = async (n: number, perProcess: number, port: number, heartbeatMs: number, seconds: number) => {
  const t0 = Date.now()
  const hosts = Array.from({ length: Math.ceil(n / perProcess) }, (_, i) =>
    spawn("scale.ts", [`h${i}`, String(Math.min(perProcess, n - i * perProcess)), String(n - 1), String(port), String(heartbeatMs)], ["--expose-gc"]))
  const converged = await Promise.all(hosts.map((h) => h.next("converged", 120_000)))
  const convergedMs = Math.max(...converged.map((c) => c.at)) - t0
  await new Promise((r) => setTimeout(r, 2 * heartbeatMs)) // past the join storm
  const sample = () =>
    Promise.all(hosts.map((h) => {
      h.send({ sample: true })
      return h.next("sampled")
    }))
  const a = await sample()
  const dropsBefore = kernelUdpDrops()
  await new Promise((r) => setTimeout(r, seconds * 1000))
  const dropsAfter = kernelUdpDrops()
  const b = await sample()
  await stop(hosts)
  // From the end of the first sample's own work to the start of the second's.
  const cpuMs = b.reduce((sum, s, i) => sum + (s.cpu.user + s.cpu.system - a[i]!.cpuAfter.user - a[i]!.cpuAfter.system) / 1000, 0)
  const wallMs = median(b.map((s, i) => s.at - a[i]!.atAfter))
  const sum = (xs: ReadonlyArray<Msg>, k: string) => xs.reduce((t, s) => t + s[k], 0)
  return {
    members: n,
    processes: hosts.length,
    convergedMs,
    // CPU per member per heartbeat interval, and the share of the machine's cores it all took.
    cpuMsPerMemberPerBeat: cpuMs / n / (wallMs / heartbeatMs),
    cpuCoresUsed: cpuMs / wallMs,
    heapPerMemberKiB: sum(b, "heapUsed") / n / 1024,
    bufferPerMemberKiB: sum(b, "external") / n / 1024,
    rssPerMemberKiB: sum(b, "rss") / n / 1024,
    // Nobody may be lost in steady state: the fewest services any member knew at the end.
    fewestKnown: Math.min(...b.map((s) => s.fewestKnown)),
    // Datagrams the kernel dropped in steady state (host-wide), if it says.
    kernelUdpDrops: dropsBefore === undefined || dropsAfter === undefined ? undefined : dropsAfter - dropsBefore,

    // Frames in and out a second in steady state, and every drop by reason (over the whole run).
    framesInPerSec: (1000 * (sum(b, "framesInAt") - sum(a, "framesIn"))) / wallMs,
    framesOutPerSec: (1000 * (sum(b, "framesOut") - sum(a, "framesOut"))) / wallMs,
    drops: b.reduce((by: Record<string, number>, s) => {
      for (const [k, v] of Object.entries(s.dropsByReason as Record<string, number>)) by[k] = (by[k] ?? 0) + v
      return by
    }, {})
  }
}

// ---- messaging ----

const pair = async (impl: "cluster" | "promise" | "raw", roles: readonly [string, string], port: number) => {
  if (impl !== "raw") {
    const file = impl === "cluster" ? "peer.ts" : "promise-peer.ts"
    const a = spawn(file, [roles[0], String(port)])
    const ready = [await a.next("ready")]
    const b = spawn(file, [roles[1], String(port)])
    ready.push(await b.next("ready"))
    // The Promise API's peers must run the shipped bundle, as a user's program does.
    const wrong = impl === "promise" ? ready.find((r) => !String(r.entry).endsWith("/dist/promise.mjs")) : undefined
    if (wrong !== undefined) throw new Error(`the Promise API peer loaded ${wrong.entry}, not dist/promise.mjs`)
    return [a, b] as const
  }
  const a = spawn("raw.ts", [roles[0]])
  const { port: rawPort } = await a.next("ready")
  const b = spawn("raw.ts", [roles[1], String(rawPort)])
  await b.next("ready")
  return [a, b] as const
}

const throughput = async (impl: "cluster" | "raw", count: number, size: number, port: number, batched = false, all = false) => {
  const [sink, source] = await pair(impl, ["sink", "source"], port)
  sink.send({ count, size })
  await sink.next("subscribed")
  const t0 = performance.now()
  source.send({ count, size, batched, all })
  await sink.next("done", 120_000)
  const seconds = (performance.now() - t0) / 1000
  await stop([sink, source])
  return { msgPerSec: count / seconds, bytesPerSec: (count * size) / seconds }
}

/**
 * `count` timed round trips after as many untimed ones (the JIT's warm-up:
 * the library's code takes a few thousand trips to be optimised, raw
 * node:net far fewer); the first thousand warm-up trips are reported apart
 * as the cold figure.
 */
const roundTrip = async (impl: "cluster" | "promise" | "raw", count: number, size: number, port: number, query = false) => {
  const [echo, pinger] = await pair(impl, query ? ["responder", "asker"] : ["echo", "pinger"], port)
  // BENCH_ALLOC=1: the responder (or echo) samples its allocations while the asker's (or pinger's) timed trips run.
  const sampling = impl !== "raw" && process.env.BENCH_ALLOC !== undefined
  if (sampling) {
    echo.send({ alloc: "start" })
    await echo.next("sampling")
  }
  const before = [onCpuNs(echo.child.pid), onCpuNs(pinger.child.pid)]
  pinger.send({ count, size, warmup: count })
  const { times, cold, alloc } = await pinger.next("times", 120_000)
  // Each side's CPU a trip, over all of them (warm-up included): where a trip's time goes.
  const [answering, asking] = [onCpuNs(echo.child.pid), onCpuNs(pinger.child.pid)].map((after, i) =>
    after === undefined || before[i] === undefined ? undefined : (after - before[i]!) / 1000 / (2 * count)
  )
  if (sampling) {
    echo.send({ alloc: "stop" })
    const answered = (await echo.next("alloc")).alloc
    const [asker, responder] = query ? ["asker", "responder"] : ["pinger", "echo"]
    const api = impl === "promise" ? "Promise API" : query ? "Effect API" : "Effect API, sendTo and back"
    console.error(`allocated a round trip (${api}): ${asker} ${Math.round(alloc.perTrip)} B, ${responder} ${Math.round(answered.perTrip)} B`)
    for (const [side, a] of [[asker, alloc], [responder, answered]] as const) {
      for (const [site, bytes] of a.top) console.error(`  ${side} ${Math.round(bytes)} B ${site}`)
    }
  }
  await stop([echo, pinger])
  return {
    p50: percentile(times, 50),
    p99: percentile(times, 99),
    coldP50: percentile(cold, 50),
    coldP99: percentile(cold, 99),
    askerCpuUs: asking ?? Number.NaN,
    responderCpuUs: answering ?? Number.NaN
  }
}

/** A process's time on a CPU so far, in ns (Linux's scheduler statistics); undefined elsewhere. */
const onCpuNs = (pid: number | undefined): number | undefined => {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0])
  } catch {
    return undefined
  }
}

/**
 * The issue's discovery targets and the raw references they were set against
 * (2 cores): 30 bare node processes all up in about 0.45 s, a bare start about
 * 50 ms of CPU. What a node start costs differs 2-4x between machines, so each
 * target is held as the same ratio over its reference measured in this run:
 * all know all <= 1.0 s / 0.45 s of the 30 bare starts; the join <= 50 ms /
 * 50 ms of a bare start's CPU; the library's start-up CPU <= 60 ms / 50 ms of it.
 */
const TARGET = { allKnown30: 1000 / 450, join: 50 / 50, libraryCpu: 60 / 50 }

const results: Record<string, unknown> = { quick, runs: RUNS, date: new Date().toISOString() }
const rows: Array<[string, string, string, string]> = []
const fmt = (x: number, digits = 1) => x.toLocaleString("en-US", { maximumFractionDigits: digits })

try {
  // Discovery: N = 2, 10, 30 processes, each N on a port of its own so runs never overlap.
  const sizes = !runs("discovery") ? [] : quick ? [2, 5] : [2, 10, 30]
  for (const [k, n] of sizes.entries()) {
    const allKnown: Array<number> = []
    const bare: Array<number> = []
    const afterLastJoin: Array<number> = []
    const joins: Array<number> = []
    const layers: Array<number> = []
    const cpus: Array<number> = []
    const bareCpus: Array<number> = []
    for (let run = 0; run < RUNS; run++) {
      const port = PORT + 40 + k
      bare.push(await bareStarts(n))
      const { members, allKnown: t, afterLastJoin: j } = await discovery(n, port)
      allKnown.push(t)
      afterLastJoin.push(j)
      if (n === sizes[sizes.length - 1]) {
        // A running cluster: past the start's last probes and answers, one heartbeat on.
        await new Promise((r) => setTimeout(r, 1000))
        // Joins alternate with bare starts: the reference sees the machine as the joins do.
        for (let i = 0; i < 3; i++) {
          bareCpus.push(await bareNode())
          const j = await joiner(n, port)
          joins.push(j.joinToAll)
          layers.push(j.layerMs)
          cpus.push(j.processCpuMs)
        }
      }
      await stop(members)
      await new Promise((r) => setTimeout(r, 200)) // let leaves settle before the next run
    }
    const ratio = median(allKnown) / median(bare)
    results[`discovery_${n}`] = {
      allKnownMs: median(allKnown),
      bareStartsMs: median(bare),
      ratio,
      ...(n === 30 ? { targetRatio: TARGET.allKnown30, met: ratio <= TARGET.allKnown30 } : {}),
      afterLastJoinMs: median(afterLastJoin),
      runs: allKnown,
      runsAfterLastJoin: afterLastJoin
    }
    rows.push([
      `discovery, ${n} processes started at once`,
      `all know all ${fmt(median(allKnown), 0)} ms after the first spawn, ${fmt(median(afterLastJoin), 0)} ms after the last join`,
      `${n} bare node processes all up ${fmt(median(bare), 0)} ms after the first spawn`,
      `${fmt(ratio, 2)}x raw${n === 30 ? ` (target <= ${fmt(TARGET.allKnown30, 2)}x: 1.0 s over the issue's 0.45 s)` : ""}`
    ])
    if (joins.length > 0) {
      const bareCpu = median(bareCpus)
      const joinRatio = median(joins) / bareCpu
      results[`join_running_${n}`] = {
        joinToAllMs: median(joins),
        layerMs: median(layers),
        perBareStartCpu: joinRatio,
        targetRatio: TARGET.join,
        met: joinRatio <= TARGET.join,
        runs: joins
      }
      rows.push([
        `join a running cluster of ${n}`,
        `knows all ${fmt(median(joins), 1)} ms after join (${fmt(median(layers), 0)} ms of it building the layer)`,
        `bare node start: ${fmt(bareCpu, 0)} ms of CPU`,
        `${fmt(joinRatio, 2)}x (target <= ${fmt(TARGET.join, 2)}x: 50 ms over the issue's 50 ms start)`
      ])
      const library = median(cpus) - bareCpu
      results.startup_cpu = {
        processCpuMs: median(cpus),
        bareNodeCpuMs: bareCpu,
        libraryCpuMs: library,
        libraryPerBareStart: library / bareCpu,
        targetRatio: TARGET.libraryCpu,
        met: library / bareCpu <= TARGET.libraryCpu
      }
      rows.push([
        "start-up CPU of a member process",
        `${fmt(median(cpus), 0)} ms (load, join, discover)`,
        `bare node ${fmt(bareCpu, 0)} ms`,
        `library ${fmt(library, 0)} ms, ${fmt(library / bareCpu, 2)}x a bare start (target <= ${fmt(TARGET.libraryCpu, 2)}x: 60 ms over the issue's 50 ms)`
      ])
    }
  }

  // Both entries as a user installs them, next to bare node and node-discover (bench/installed.ts).
  if (runs("installed") && !quick) {
    if (!canRunInstalled()) console.log("installed: skipped (needs root for a network namespace)")
    else {
      const r = await installedStartup(here(".."), RUNS, true)
      results.installed = r
      const l = r.loadCpuMs
      rows.push([
        "installed: load the Effect entry",
        `${fmt(l.effectEntry, 1)} ms of CPU; the library's own on top of the Effect modules it uses: ${fmt(l.effectEntryOwn, 1)} ms`,
        `bare node ${fmt(l.bareNode, 1)} ms; those Effect modules alone ${fmt(l.effectModulesAlone, 1)} ms`,
        `target: own <= 15 ms`
      ])
      rows.push([
        "installed: load the Promise entry (one bundled file)",
        `${fmt(l.promiseEntry, 1)} ms of CPU`,
        `bare node ${fmt(l.bareNode, 1)} ms`,
        `${fmt(l.promiseEntry / l.bareNode, 2)}x a bare start`
      ])
      const t = r.twoAtOnce
      type Pair = { allKnownMs: number; cpuMs: number }
      /** A pair of ours: when both knew each other, and each one's CPU. */
      const ourPair = (x: Pair) => `both know each other ${fmt(x.allKnownMs, 0)} ms after the first spawn; ${fmt(x.cpuMs, 0)} ms of CPU a process`
      const theirPair = (x: Pair) => `${fmt(x.allKnownMs, 0)} ms, ${fmt(x.cpuMs, 0)} ms of CPU`
      const peerList = `node-discover ${theirPair(t.nodeDiscover)}; cote ${theirPair(t.cote)}; bonjour-service ${theirPair(t.bonjourService)}`
      const lightest = Math.min(t.nodeDiscover.cpuMs, t.cote.cpuMs, t.bonjourService.cpuMs)
      // Issue 16's targets are the Promise entry's, against node-discover's CPU in a program of the same module
      // format; beside the 100 ms, what 2 bare node processes started the same way take to be up.
      const promiseTargets = (x: Pair, discover: Pair, bareUpMs: number) =>
        `CPU ${fmt(x.cpuMs / discover.cpuMs, 2)}x node-discover's (target <= 1.2x); target <= 100 ms, 2 bare node processes up in ${fmt(bareUpMs, 0)} ms`
      rows.push([
        "installed: 2 processes at once, Promise entry, ES module program",
        ourPair(t.promise),
        `node-discover imported ${theirPair(t.nodeDiscoverEsm)}; bare node ${fmt(l.bareNode, 1)} ms`,
        promiseTargets(t.promise, t.nodeDiscoverEsm, r.twoBareUpMs.esm)
      ])
      rows.push([
        "installed: 2 processes at once, Promise entry, CommonJS program",
        ourPair(t.promiseCjs),
        `${peerList}; bare node ${fmt(l.bareNodeCjs, 1)} ms`,
        promiseTargets(t.promiseCjs, t.nodeDiscover, r.twoBareUpMs.cjs)
      ])
      const extraFaults = t.promiseCjs.faults - t.nodeDiscover.faults
      rows.push([
        "installed: page faults a process (its first touches of memory), 2 at once",
        `Promise entry: ${fmt(t.promise.faults, 0)} (ES module program), ${fmt(t.promiseCjs.faults, 0)} (CommonJS)`,
        `node-discover ${fmt(t.nodeDiscoverEsm.faults, 0)} (imported), ${fmt(t.nodeDiscover.faults, 0)}; bare node ${fmt(l.bareNodeFaults, 0)}, ${fmt(l.bareNodeCjsFaults, 0)}`,
        // The CommonJS member's extra faults, priced: how much of its CPU over node-discover's is memory first touched.
        `a fault costs ${fmt(r.faultUs, 1)} µs here: the CommonJS member's ${fmt(extraFaults, 0)} more ≈ ${fmt(extraFaults * r.faultUs / 1000, 1)} ms of its ${
          fmt(t.promiseCjs.cpuMs - t.nodeDiscover.cpuMs, 1)
        } ms more CPU`
      ])
      rows.push([
        "installed: 2 processes at once, Effect entry",
        ourPair(t.effect),
        peerList,
        // Its target is its own load (above).
        `CPU ${fmt(t.effect.cpuMs / lightest, 2)}x the lightest peer's`
      ])
      const thirty = r.thirtyAtOnce
      if (thirty !== undefined) {
        const best = Math.min(thirty.nodeDiscover, thirty.cote, thirty.bonjourService)
        rows.push([
          "installed: 30 processes at once, Promise entry",
          `all know all ${fmt(thirty.promise, 0)} ms after the first spawn`,
          `node-discover ${fmt(thirty.nodeDiscover, 0)} ms; cote ${fmt(thirty.cote, 0)} ms; bonjour-service ${fmt(thirty.bonjourService, 0)} ms; 30 bare node ${fmt(thirty.bare, 0)} ms`,
          `${fmt(thirty.promise / best, 2)}x the fastest peer's (target <= 1x)`
        ])
      }
    }
  }

  if (runs("idle")) {
    const shares: Array<number> = []
    for (let run = 0; run < RUNS; run++) shares.push(await idle(PORT + 60, quick ? 2 : 5))
    results.idle = { cpuPercentOfCore: median(shares), beatBytes: 20, heartbeatSeconds: 1, runs: shares }
    rows.push([
      "idle member (1 s heartbeat)",
      `${fmt(median(shares), 2)}% of a core; 20-byte beat a second`,
      "zyre.js: 22-byte beacon a second",
      "targets: < 0.5% of a core, beat <= 24 bytes"
    ])
  }

  if (runs("scale")) {
    // 50 members a process, so the per-member figures compare across N.
    const sizes = quick ? [10] : process.env.BENCH_SCALE ? process.env.BENCH_SCALE.split(",").map(Number) : [50, 100, 200, 500]
    const perProcess = quick ? 10 : 50
    const heartbeatMs = 1000
    const curve: Array<Awaited<ReturnType<typeof scale>>> = []
    for (const [k, n] of sizes.entries()) {
      curve.push(await scale(n, perProcess, PORT + 70 + k, heartbeatMs, quick ? 2 : 5))
      await new Promise((r) => setTimeout(r, 500))
    }
    // Memory per known service: the slope of heap per member against N (fixed costs cancel).
    const first = curve[0]!
    const last = curve[curve.length - 1]!
    const perService = curve.length > 1 ? ((last.heapPerMemberKiB - first.heapPerMemberKiB) * 1024) / (last.members - first.members) : NaN
    results.scale = { heartbeatMs, perProcess, curve, heapBytesPerKnownService: perService }
    for (const c of curve) {
      rows.push([
        `scale: ${c.members} members on one host (${c.processes} processes)`,
        `all know all in ${fmt(c.convergedMs / 1000, 2)} s; ${fmt(c.cpuMsPerMemberPerBeat, 3)} ms CPU a member a heartbeat; heap ${fmt(c.heapPerMemberKiB, 0)} KiB a member`,
        `${fmt(c.cpuCoresUsed, 2)} cores busy in all; fewest known ${c.fewestKnown} of ${c.members - 1}${c.kernelUdpDrops === undefined ? "" : `; kernel dropped ${fmt(c.kernelUdpDrops, 0)} datagrams`}`,
        `${fmt((c.cpuMsPerMemberPerBeat * 1000) / c.members, 2)} µs a member a beat heard`
      ])
    }
    if (curve.length > 1) rows.push(["scale: memory per known service", `${fmt(perService, 0)} bytes (heap slope, ${first.members} to ${last.members} members)`, "-", "-"])
  }

  if (runs("reach") && hasRedisServer()) {
    // N members through one redis-server, next to the same N on multicast, in this run.
    const n = quick ? 20 : Number(process.env.BENCH_REACH ?? 1000)
    const perProcess = quick ? 10 : 50
    const runsOf: Array<ReachRun> = []
    const failed: Array<{ mode: string; error: string }> = []
    for (const [k, mode] of (["redis", "multicast"] as const).entries()) {
      try {
        runsOf.push(await reach(spawn, stop, mode, n, perProcess, PORT + 80 + k, quick ? 2 : 5))
      } catch (e) {
        // A mode that cannot carry N members on this machine is a result, not a crash of the bench.
        failed.push({ mode, error: String((e as Error).message ?? e) })
        rows.push([`reach: ${n} members on ${mode}`, `did not complete: ${String((e as Error).message ?? e)}`, "-", "-"])
        await stop([...children].map((child) => ({ child })))
      }
      await new Promise((r) => setTimeout(r, 500))
    }
    results.reach = { runs: runsOf, failed }
    for (const r of runsOf) {
      rows.push([
        `reach: ${r.members} members on ${r.mode} (${r.processes} processes)`,
        `all know all ${fmt(r.allKnowAllMs / 1000, 2)} s after the last start; a join known to all ${fmt(r.joinKnownToAllMs, 0)} ms after the joiner's start${r.joinKnownToAllAfterRegistrationMs === undefined ? "" : `, ${fmt(r.joinKnownToAllAfterRegistrationMs, 1)} ms after its join event left Redis (target < 50 ms)`} (the joiner knows all in ${fmt(r.joinerKnowsAllMs, 0)} ms); a crash noticed by all in ${fmt(r.crashNoticedMs / 1000, 2)} s`,
        `${fmt(r.cpuMsPerMemberPerBeat, 3)} ms CPU a member a heartbeat; heap ${fmt(r.heapPerMemberKiB, 0)} KiB, rss ${fmt(r.rssPerMemberKiB, 0)} KiB a member; fewest known ${r.fewestKnown} of ${r.members - 1}`,
        r.redis === undefined ? "-" : `Redis: ${fmt(r.redis.commandsPerSec, 0)} commands/s, ${fmt(r.redis.scriptCallsPerMemberPerBeat, 2)} script calls a member a beat (target <= 1.2), ${fmt(r.redis.cpuShareOfCore * 100, 1)}% of a core (target < 10%), ${fmt(r.redis.usedMemoryBytes / 1024 / 1024, 1)} MiB`
      ])
    }
  }

  const count = Number(process.env.BENCH_COUNT ?? (quick ? 5_000 : 500_000))
  const tp = { cluster: [] as Array<number>, raw: [] as Array<number> }
  for (let run = 0; run < (runs("throughput") ? RUNS : 0); run++) {
    tp.raw.push((await throughput("raw", count, 100, PORT)).msgPerSec)
    tp.cluster.push((await throughput("cluster", count, 100, PORT)).msgPerSec)
  }
  const tpRatio = median(tp.cluster) / median(tp.raw)
  if (tp.raw.length > 0) results.throughput_100B = { clusterMsgPerSec: median(tp.cluster), rawMsgPerSec: median(tp.raw), ratio: tpRatio, count }
  if (tp.raw.length > 0) rows.push(["sendTo 100 B, tcp, one-way", `${fmt(median(tp.cluster), 0)} msg/s`, `raw ${fmt(median(tp.raw), 0)} msg/s`, `${fmt(tpRatio * 100, 0)}% of raw (target >= 50%)`])

  // The streaming form (sendAll, 1,000 a call) against raw node:net, 64 frames a write.
  const streamed = { cluster: [] as Array<number>, raw: [] as Array<number> }
  const streamCount = quick ? 5_000 : 1_000_000
  for (let run = 0; run < (runs("throughput") ? RUNS : 0); run++) {
    streamed.raw.push((await throughput("raw", streamCount, 100, PORT, true)).msgPerSec)
    streamed.cluster.push((await throughput("cluster", streamCount, 100, PORT, false, true)).msgPerSec)
  }
  if (streamed.raw.length > 0) {
    const ratio = median(streamed.cluster) / median(streamed.raw)
    results.throughput_100B_streamed = { clusterMsgPerSec: median(streamed.cluster), rawBatchedMsgPerSec: median(streamed.raw), ratio, count: streamCount }
    rows.push([
      "sendAll 100 B, tcp, one-way",
      `${fmt(median(streamed.cluster), 0)} msg/s`,
      `raw ${fmt(median(streamed.raw), 0)} msg/s (64 frames a write)`,
      `${fmt(ratio * 100, 0)}% of raw (target: 1M msg/s)`
    ])
  }

  // 64 KiB messages: bytes per second against raw node:net, 64 frames a write.
  const big = { cluster: [] as Array<number>, raw: [] as Array<number> }
  const bigCount = quick ? 500 : 20_000
  for (let run = 0; run < (runs("throughput") ? RUNS : 0); run++) {
    big.raw.push((await throughput("raw", bigCount, 65536, PORT, true)).bytesPerSec)
    big.cluster.push((await throughput("cluster", bigCount, 65536, PORT)).bytesPerSec)
  }
  if (big.raw.length > 0) {
    const ratio = median(big.cluster) / median(big.raw)
    results.throughput_64KiB = { clusterBytesPerSec: median(big.cluster), rawBatchedBytesPerSec: median(big.raw), ratio, count: bigCount }
    rows.push([
      "sendTo 64 KiB, tcp, one-way",
      `${fmt(median(big.cluster) / 1e9, 2)} GB/s`,
      `raw ${fmt(median(big.raw) / 1e9, 2)} GB/s (64 frames a write)`,
      `${fmt(ratio * 100, 0)}% of raw (target >= 50%)`
    ])
  }

  // Round trips, each kind next to the raw echo of the same run: a query and
  // its response (the issue's measure), and a sendTo answered by a sendTo.
  const rtCount = quick ? 500 : 10_000
  type Trip = { p50: number; p99: number; coldP50: number; coldP99: number; askerCpuUs: number; responderCpuUs: number }
  const rt = { raw: [] as Array<Trip>, query: [] as Array<Trip>, sendTo: [] as Array<Trip>, promise: [] as Array<Trip> }
  for (let run = 0; run < (runs("rtt") ? RUNS : 0); run++) {
    rt.raw.push(await roundTrip("raw", rtCount, 100, PORT))
    rt.query.push(await roundTrip("cluster", rtCount, 100, PORT, true))
    rt.sendTo.push(await roundTrip("cluster", rtCount, 100, PORT))
    // The same query on the Promise API: a plain function answers, `await member.queryAll` asks.
    rt.promise.push(await roundTrip("promise", rtCount, 100, PORT, true))
  }
  const m = (xs: Array<Trip>, k: keyof Trip) => median(xs.map((x) => x[k]))
  const cpuSides = (xs: Array<Trip>) => `${fmt(m(xs, "askerCpuUs"), 1)} / ${fmt(m(xs, "responderCpuUs"), 1)} µs (asking / answering)`
  if (rt.raw.length > 0) {
    results.round_trip_100B = {
      queryP50Ms: m(rt.query, "p50"),
      queryP99Ms: m(rt.query, "p99"),
      sendToP50Ms: m(rt.sendTo, "p50"),
      sendToP99Ms: m(rt.sendTo, "p99"),
      promiseQueryP50Ms: m(rt.promise, "p50"),
      promiseQueryP99Ms: m(rt.promise, "p99"),
      rawP50Ms: m(rt.raw, "p50"),
      rawP99Ms: m(rt.raw, "p99"),
      // Each side's CPU a trip (Linux), asking / answering.
      cpuUs: Object.fromEntries(Object.entries(rt).map(([k, xs]) => [k, { asking: m(xs, "askerCpuUs"), answering: m(xs, "responderCpuUs") }])),
      coldQueryP50Ms: m(rt.query, "coldP50"),
      coldQueryP99Ms: m(rt.query, "coldP99"),
      coldRawP50Ms: m(rt.raw, "coldP50"),
      coldRawP99Ms: m(rt.raw, "coldP99"),
      runs: rt
    }
    // The query's target is issue 16's; the sendTo pair has none of its own.
    for (const [label, trips, target] of [["query + response", rt.query, " (target 1.2x / 2x)"], ["sendTo + sendTo back", rt.sendTo, ""], ["Promise API: query + response", rt.promise, ""]] as const) {
      rows.push([
        `round trip 100 B (${label})`,
        `p50 ${fmt(m(trips, "p50"), 3)} ms, p99 ${fmt(m(trips, "p99"), 3)} ms; CPU a trip ${cpuSides(trips)}`,
        `raw echo p50 ${fmt(m(rt.raw, "p50"), 3)} ms, p99 ${fmt(m(rt.raw, "p99"), 3)} ms; CPU a trip ${cpuSides(rt.raw)}`,
        `${fmt(m(trips, "p50") / m(rt.raw, "p50"), 2)}x / ${fmt(m(trips, "p99") / m(rt.raw, "p99"), 2)}x raw${target}`
      ])
    }
    rows.push([
      "round trip 100 B (query + response), cold: the first 1,000",
      `p50 ${fmt(m(rt.query, "coldP50"), 3)} ms, p99 ${fmt(m(rt.query, "coldP99"), 3)} ms`,
      `raw echo p50 ${fmt(m(rt.raw, "coldP50"), 3)} ms, p99 ${fmt(m(rt.raw, "coldP99"), 3)} ms`,
      `${fmt(m(rt.query, "coldP50") / m(rt.raw, "coldP50"), 2)}x / ${fmt(m(rt.query, "coldP99") / m(rt.raw, "coldP99"), 2)}x raw`
    ])
  }
} finally {
  await stop([...children].map((child) => ({ child })))
}

const widths = [0, 1, 2, 3].map((i) => Math.max(...[["work", "cluster-comm", "reference", "ratio"], ...rows].map((r) => r[i]!.length)))
const line = (r: ReadonlyArray<string>) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`
console.log(line(["work", "cluster-comm", "reference", "ratio"]))
console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`)
for (const r of rows) console.log(line(r))
mkdirSync(here("results"), { recursive: true })
writeFileSync(here(quick ? "results/quick.json" : "results/latest.json"), JSON.stringify(results, null, 2))
// The chart docs/benchmarks.md shows, from a full run of every section (a quick or partial one keeps its own).
writeFileSync(quick || only !== undefined ? here("results/chart.svg") : here("../docs/benchmarks.svg"), chartSvg(results))
console.log(JSON.stringify(results))
