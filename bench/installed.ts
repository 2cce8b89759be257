/**
 * `--only installed`: both entries as a user installs them (from the packed
 * tarball, in an empty project), next to bare node processes and the peers
 * (node-discover, cote, bonjour-service; zyre.js needs zeromq's native build,
 * not to be had here), all in the same run:
 *
 * - load: a process's CPU to import the Effect entry, the Effect modules it
 *   uses alone, and the Promise entry (one bundled file); and the Effect
 *   entry's own, in a process that has loaded those modules first;
 * - a member: 2 processes started at once, each until it knows the other: the
 *   time from the first spawn, and each process's CPU and page faults up to then. Ours and
 *   node-discover's each as an ES module program and a CommonJS one: a
 *   program's own module format costs it 3 ms or more, whatever it loads;
 * - 30 processes started at once (full runs): until all know all.
 *
 * Every process runs in a network namespace of the bench's own (loopback
 * only; node-discover sends with a multicast TTL of at least 1), so nothing
 * leaves the machine; without root this section is skipped.
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { median } from "./summary.ts"

type Report = Record<string, any>

const PORT = 23000
/** Pairs a run of the Promise members and node-discover's (the ratios' samples). */
const PAIRS_A_RUN = 3
const GROUP = "239.7.7.7"

/**
 * A process's CPU so far, and its first touches of memory (minor page faults):
 * what a start costs differs between machines mostly by what a fault costs.
 */
const USAGE = "cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault"
/** A member's one line once it knows all the others: when, and its usage until then. */
const KNOWS_ALL = `console.log(JSON.stringify({ knowsAllAt: Date.now(), ${USAGE} }))`

/** A Promise API member; `entry` is how its program takes the entry (an import or a require). */
const promiseMember = (entry: string) => `
    const [name, expect] = process.argv.slice(2)
    const { join } = ${entry}
    join({ name, port: ${PORT}, address: "${GROUP}", heartbeat: "1 second", ttl: "5 seconds" }).then((member) => {
      const done = () => ${KNOWS_ALL}
      if (member.services().length >= Number(expect)) done()
      else member.on("found", () => { if (member.services().length === Number(expect)) done() })
    })`

/** A node-discover member; `entry` is how its program takes the package. */
const discoverMember = (entry: string) => `
    const [, expect] = process.argv.slice(2)
    const Discover = ${entry}
    const d = Discover({ port: ${PORT}, multicast: "${GROUP}", multicastTTL: 1 })
    let known = 0
    d.on("added", () => {
      if (++known === Number(expect)) ${KNOWS_ALL}
    })
    process.on("SIGTERM", () => process.exit(0))`

/**
 * The Effect modules the installed Effect entry imports as it loads, read
 * from its files (what it imports on demand, `import("…")`, is not part of
 * its load): a list kept by hand goes stale as the library changes.
 */
const effectModulesOf = (dist: string): Array<string> => {
  const modules = new Set<string>()
  const read = new Set<string>()
  const visit = (file: string) => {
    if (read.has(file)) return
    read.add(file)
    for (const [, specifier] of readFileSync(join(dist, file), "utf8").matchAll(/\bfrom\s*"([^"]+)"/g)) {
      if (specifier!.startsWith("effect/")) modules.add(specifier!)
      else if (specifier!.startsWith("./")) visit(join(dirname(file), specifier!))
    }
  }
  visit("index.mjs")
  return [...modules].sort()
}

/** The scripts that load those modules: alone, and then the entry on top of them. */
const effectModuleScripts = (modules: ReadonlyArray<string>): Record<string, string> => {
  const load = `for (const m of ${JSON.stringify(modules)}) await import(m)`
  return {
    "load-effect-modules.mjs": `${load}
    console.log(JSON.stringify({ cpu: process.cpuUsage() }))`,
    // The entry's own cost measured inside one process, on top of its Effect modules
    // already loaded: a difference of two processes' CPU is lost in their spread.
    "load-effect-entry-own.mjs": `${load}
    const before = process.cpuUsage()
    await import("cluster-comm")
    const own = process.cpuUsage(before)
    console.log(JSON.stringify({ cpu: process.cpuUsage(), ownMs: (own.user + own.system) / 1000 }))`
  }
}

/** The scripts a process runs, each printing one JSON line when it is done (then waiting to be ended). */
const scripts: Record<string, string> = {
  "bare.mjs": `console.log(JSON.stringify({ ${USAGE} }))`,
  "bare.cjs": `console.log(JSON.stringify({ ${USAGE} }))`,
  // What a page fault costs on this machine: CPU for touching 2,000 fresh pages,
  // less the same writes again on pages already there. Where a fault is dear, a
  // process's start is as much the memory it touches as the code it runs.
  "fault-price.mjs": `
    const pages = [], faults0 = process.resourceUsage().minorPageFault, cpu0 = process.cpuUsage()
    for (let i = 0; i < 125; i++) pages.push(Buffer.allocUnsafeSlow(65536).fill(1))
    const first = process.cpuUsage(cpu0), faults = process.resourceUsage().minorPageFault - faults0
    const cpu1 = process.cpuUsage()
    for (const p of pages) p.fill(2)
    const again = process.cpuUsage(cpu1)
    const us = (c) => c.user + c.system
    console.log(JSON.stringify({ usPerFault: (us(first) - us(again)) / faults, faults }))`,
  "load-effect-entry.mjs": `await import("cluster-comm"); console.log(JSON.stringify({ cpu: process.cpuUsage() }))`,
  "load-promise-entry.mjs": `await import("cluster-comm/promise"); console.log(JSON.stringify({ cpu: process.cpuUsage() }))`,
  "promise-member.mjs": promiseMember(`await import("cluster-comm/promise")`),
  // The same member in a CommonJS program: `require` takes the entry's CommonJS build.
  "promise-member.cjs": promiseMember(`require("cluster-comm/promise")`),
  "effect-member.mjs": `
    const [name, expect] = process.argv.slice(2)
    const Effect = await import("effect/Effect")
    const Stream = await import("effect/Stream")
    const { Cluster, ClusterLive } = await import("cluster-comm")
    const known = new Set()
    Effect.runFork(Cluster.events.pipe(
      Stream.filter((e) => e._tag === "ServiceFound"),
      Stream.takeWhile((e) => known.add(e.service.id).size < Number(expect)),
      Stream.runDrain,
      Effect.andThen(Effect.sync(() => ${KNOWS_ALL})),
      Effect.andThen(Effect.never),
      Effect.provide(ClusterLive({ name, port: ${PORT}, address: "${GROUP}", heartbeat: "1 second", ttl: "5 seconds" }))
    ))
    process.on("SIGTERM", () => process.exit(0))`,
  "discover-member.cjs": discoverMember(`require("node-discover")`),
  // node-discover in an ES module program, as ours above: importing a CommonJS package costs it its exports' analysis.
  "discover-member.mjs": discoverMember(`(await import("node-discover")).default`),
  "cote-member.cjs": `
    const [name, expect] = process.argv.slice(2)
    const cote = require("cote")
    const r = new cote.Responder({ name, key: "bench" }, { multicast: "${GROUP}", log: false, statusLogsEnabled: false })
    // Its discovery starts once its socket is bound: look at what it knows every 5 ms.
    const poll = setInterval(() => {
      if (r.discovery === undefined || Object.keys(r.discovery.nodes).length < Number(expect)) return
      clearInterval(poll)
      ${KNOWS_ALL}
    }, 5)
    process.on("SIGTERM", () => process.exit(0))`,
  // mDNS on its own group and port (224.0.0.251:5353), routed through loopback in the namespace.
  "bonjour-member.cjs": `
    const [name, expect] = process.argv.slice(2)
    const { Bonjour } = require("bonjour-service")
    const b = new Bonjour()
    b.publish({ name, type: "bench", port: 3000 + Number(name.slice(1)) })
    const seen = new Set()
    b.find({ type: "bench" }, (s) => {
      if (s.name === name || seen.has(s.name)) return
      seen.add(s.name)
      if (seen.size === Number(expect)) ${KNOWS_ALL}
    })
    process.on("SIGTERM", () => process.exit(0))`
}

const cpuMs = (r: Report) => (r.cpu.user + r.cpu.system) / 1000

export const canRunInstalled = (): boolean => {
  if (process.getuid?.() !== 0) return false
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
}

/** Packs the repository, installs it and node-discover in an empty project; returns its folder and how to remove it all. */
const install = (root: string) => {
  const scratch = mkdtempSync(join(tmpdir(), "cluster-comm-installed-"))
  execFileSync("npm", ["pack", "--ignore-scripts", "--pack-destination", scratch], { cwd: root, stdio: "ignore" })
  const tarball = readdirSync(scratch).find((f) => f.endsWith(".tgz"))!
  const project = join(scratch, "project")
  mkdirSync(project)
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "bench-installed", private: true, type: "module" }))
  execFileSync("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", join(scratch, tarball), "node-discover@1.2.1", "cote@1.2.0", "bonjour-service@1.4.4"], { cwd: project, stdio: "ignore" })
  const effectModules = effectModulesOf(join(project, "node_modules", "cluster-comm", "dist"))
  for (const [file, text] of Object.entries({ ...scripts, ...effectModuleScripts(effectModules) })) writeFileSync(join(project, file), text)
  // A namespace with loopback alone, multicast routed through it.
  const ns = `cc-bench-${process.pid}`
  execFileSync("ip", ["netns", "add", ns])
  execFileSync("ip", ["-n", ns, "link", "set", "lo", "up"])
  execFileSync("ip", ["-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo"])
  return {
    project,
    ns,
    remove: () => {
      execFileSync("ip", ["netns", "del", ns])
      rmSync(scratch, { recursive: true, force: true })
    }
  }
}

export const installedStartup = async (root: string, runs: number, withThirty: boolean) => {
  const { project, ns, remove } = install(root)
  const started = new Set<ReturnType<typeof spawn>>()
  /** Starts a script in the namespace; resolves with its report, its process left running. */
  const start = (file: string, args: ReadonlyArray<string> = []) => {
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, join(project, file), ...args], {
      cwd: project,
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, NODE_OPTIONS: "", NODE_COMPILE_CACHE: join(tmpdir(), "cluster-comm-bench-installed-cache") }
    })
    started.add(child)
    child.once("exit", () => started.delete(child))
    const report = new Promise<Report>((resolve, reject) => {
      let out = ""
      const timer = setTimeout(() => reject(new Error(`${file}: no report within 30 s`)), 30_000)
      child.stdout!.on("data", (c: Buffer) => {
        out += c.toString()
        const nl = out.indexOf("\n")
        if (nl < 0) return
        clearTimeout(timer)
        resolve(JSON.parse(out.slice(0, nl)))
      })
    })
    return { child, report }
  }
  const end = (children: ReadonlyArray<ReturnType<typeof spawn>>) =>
    Promise.all(children.map((c) =>
      new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve()
        c.once("exit", () => resolve())
        c.kill("SIGTERM") // our own child, by its PID
      })
    ))
  /** A script that reports once and exits: its report. */
  const reportOf = async (file: string) => {
    const { child, report } = start(file)
    const r = await report
    await end([child])
    return r
  }
  /** The same: its CPU. */
  const once = async (file: string) => cpuMs(await reportOf(file))
  /** The same: its CPU and page faults. */
  const usageOf = async (file: string) => {
    const r = await reportOf(file)
    return { cpuMs: cpuMs(r), faults: r.faults as number }
  }
  /** N processes of a kind started at once: from the first spawn until the last knows all; each one's CPU. */
  const together = async (file: string, n: number) => {
    const t0 = Date.now()
    const members = Array.from({ length: n }, (_, i) => start(file, [`m${i}`, String(n - 1)]))
    const reports = await Promise.all(members.map((m) => m.report))
    await end(members.map((m) => m.child))
    await new Promise((r) => setTimeout(r, 200))
    return { allKnownMs: Math.max(...reports.map((r) => r.knowsAllAt)) - t0, cpuMs: median(reports.map(cpuMs)), faults: median(reports.map((r) => r.faults)) }
  }
  /** N bare node processes started at once: from the first spawn until all are up (the floor under `together`). */
  const upTogether = async (file: string, n: number) => {
    const t0 = Date.now()
    const bare = Array.from({ length: n }, () => start(file))
    await Promise.all(bare.map((b) => b.report))
    const upMs = Date.now() - t0
    await end(bare.map((b) => b.child))
    return upMs
  }

  try {
    type Usage = { cpuMs: number; faults: number }
    const load = { faultUs: [] as Array<number>, bare: [] as Array<Usage>, bareCjs: [] as Array<Usage>, effectModules: [] as Array<number>, effectEntry: [] as Array<number>, effectEntryOwn: [] as Array<number>, promiseEntry: [] as Array<number> }
    const peers = { nodeDiscover: "discover-member.cjs", cote: "cote-member.cjs", bonjourService: "bonjour-member.cjs" } as const
    type Peer = keyof typeof peers
    const pairs = {
      promise: [] as Array<Report>,
      promiseCjs: [] as Array<Report>,
      effect: [] as Array<Report>,
      nodeDiscover: [] as Array<Report>,
      nodeDiscoverEsm: [] as Array<Report>,
      cote: [] as Array<Report>,
      bonjourService: [] as Array<Report>
    }
    const thirty = { promise: [] as Array<number>, nodeDiscover: [] as Array<number>, cote: [] as Array<number>, bonjourService: [] as Array<number>, bare: [] as Array<number> }
    const twoBare = { esm: [] as Array<number>, cjs: [] as Array<number> }
    // Warm the compile cache once for each, as a deployed program's second start would be.
    for (const f of ["load-effect-entry.mjs", "load-promise-entry.mjs", "load-effect-modules.mjs", "load-effect-entry-own.mjs"]) await once(f)
    for (const f of ["promise-member.cjs", "discover-member.cjs", "discover-member.mjs"]) await together(f, 2)
    for (let run = 0; run < runs; run++) {
      // Interleaved, so that each sees the machine as the others do.
      load.faultUs.push((await reportOf("fault-price.mjs")).usPerFault)
      load.bare.push(await usageOf("bare.mjs"))
      load.bareCjs.push(await usageOf("bare.cjs"))
      load.effectModules.push(await once("load-effect-modules.mjs"))
      load.effectEntry.push(await once("load-effect-entry.mjs"))
      // Three a run: one process's figure moves by a few ms from start to start.
      for (let i = 0; i < 3; i++) load.effectEntryOwn.push((await reportOf("load-effect-entry-own.mjs")).ownMs)
      load.promiseEntry.push(await once("load-promise-entry.mjs"))
      // The ratios to node-discover's CPU rest on these: three pairs of each a run,
      // ours and node-discover's in turn, so that both see the machine alike
      // (one pair's CPU moves by a tenth from start to start).
      for (let i = 0; i < PAIRS_A_RUN; i++) {
        pairs.promiseCjs.push(await together("promise-member.cjs", 2))
        pairs.nodeDiscover.push(await together("discover-member.cjs", 2))
        pairs.promise.push(await together("promise-member.mjs", 2))
        pairs.nodeDiscoverEsm.push(await together("discover-member.mjs", 2))
        twoBare.cjs.push(await upTogether("bare.cjs", 2))
        twoBare.esm.push(await upTogether("bare.mjs", 2))
      }
      pairs.effect.push(await together("effect-member.mjs", 2))
      for (const peer of ["cote", "bonjourService"] as const) pairs[peer].push(await together(peers[peer], 2))
      if (withThirty) {
        thirty.promise.push((await together("promise-member.mjs", 30)).allKnownMs)
        for (const peer of Object.keys(peers) as Array<Peer>) thirty[peer].push((await together(peers[peer], 30)).allKnownMs)
        thirty.bare.push(await upTogether("bare.mjs", 30))
      }
    }
    const m = (xs: ReadonlyArray<Report>, k: string) => median(xs.map((x) => x[k]))
    return {
      /** CPU a minor page fault costs here, in µs. */
      faultUs: median(load.faultUs),
      loadCpuMs: {
        bareNode: median(load.bare.map((u) => u.cpuMs)),
        bareNodeCjs: median(load.bareCjs.map((u) => u.cpuMs)),
        bareNodeFaults: median(load.bare.map((u) => u.faults)),
        bareNodeCjsFaults: median(load.bareCjs.map((u) => u.faults)),
        effectModulesAlone: median(load.effectModules),
        effectEntry: median(load.effectEntry),
        promiseEntry: median(load.promiseEntry),
        // The library's own cost on top of loading the Effect modules it uses, in one process.
        effectEntryOwn: median(load.effectEntryOwn)
      },
      twoAtOnce: Object.fromEntries(Object.entries(pairs).map(([k, xs]) => [k, { allKnownMs: m(xs, "allKnownMs"), cpuMs: m(xs, "cpuMs"), faults: m(xs, "faults") }])) as
        Record<keyof typeof pairs, { allKnownMs: number; cpuMs: number; faults: number }>,
      /** 2 bare node processes started at once, until both are up: what the 100 ms target leaves the library. */
      twoBareUpMs: { esm: median(twoBare.esm), cjs: median(twoBare.cjs) },
      ...(withThirty
        ? { thirtyAtOnce: Object.fromEntries(Object.entries(thirty).map(([k, xs]) => [k, median(xs)])) as Record<keyof typeof thirty, number> }
        : {}),
      runs: { load, pairs, twoBare, thirty }
    }
  } finally {
    await end([...started])
    remove()
  }
}
