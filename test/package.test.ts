import { spawnSync } from "node:child_process"
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { testCluster } from "./helpers.ts"
import { canRunRedis } from "./support/redis.ts"

// One file, in order: build once, then the bench smoke run and the packed package.
const root = fileURLToPath(new URL("..", import.meta.url))
const run = (command: string, args: ReadonlyArray<string>, options: { cwd: string; env?: NodeJS.ProcessEnv; timeout?: number }) =>
  spawnSync(command, args, { encoding: "utf8", timeout: options.timeout ?? 120_000, ...options })

describe("the built package", () => {
  const scratch = mkdtempSync(join(tmpdir(), "cluster-comm-pack-"))
  afterAll(() => rmSync(scratch, { recursive: true, force: true }))

  it("builds", () => {
    const build = run("npm", ["run", "build"], { cwd: root })
    assert.strictEqual(build.status, 0, build.stderr)
    // The library's own modules, their functions marked for eager compiling (scripts/eager.ts).
    assert.match(build.stdout, /dist\/index\.mjs: \d{3,} functions marked for eager compiling/)
    // Those a rehearsed member runs (scripts/rehearse*.ts), on both entries: not every function for want of a rehearsal.
    assert.notMatch(build.stdout, /the rehearsal did not complete/)
  }, 120_000)

  // Benchmarks are not tests: this only runs them with small counts, so the
  // bench never rots, and checks that every section produced its figures.
  it("runs every bench section with small counts", () => {
    const bench = run(process.execPath, ["--conditions=development", `${root}bench/run.ts`, "--quick"], { cwd: root })
    assert.strictEqual(bench.status, 0, bench.stderr)
    const results = JSON.parse(readFileSync(`${root}bench/results/quick.json`, "utf8"))
    for (const key of ["discovery_2", "discovery_5", "join_running_5", "startup_cpu", "idle", "throughput_100B", "round_trip_100B"]) {
      assert.property(results, key)
    }
    assert.isAbove(results.throughput_100B.clusterMsgPerSec, 0)
    // Both APIs' query round trips were timed (the Promise API's from dist/promise.mjs).
    assert.isAbove(results.round_trip_100B.queryP50Ms, 0)
    assert.isAbove(results.round_trip_100B.promiseQueryP50Ms, 0)
    // And each side's CPU a trip, read from the kernel's accounting of each process.
    for (const kind of ["raw", "query", "promise"]) assert.isAbove(results.round_trip_100B.cpuUs[kind].asking, 0)
    // The reach section (with redis-server installed): both modes ran, every member knew every other.
    if (canRunRedis()) {
      assert.deepStrictEqual(results.reach.failed, [])
      assert.deepStrictEqual(results.reach.runs.map((r: { mode: string }) => r.mode), ["redis", "multicast"])
      for (const r of results.reach.runs) assert.strictEqual(r.fewestKnown, r.members - 1)
      assert.isAbove(results.reach.runs[0].redis.scriptCallsPerMemberPerBeat, 0)
    }
    // The chart drawn from the same figures (a full run writes docs/benchmarks.svg).
    const chart = readFileSync(`${root}bench/results/chart.svg`, "utf8")
    assert.match(chart, /^<svg /)
    for (const label of ["N = 2", "N = 5", `${results.scale.curve[0].members}</text>`]) assert.include(chart, label)
    // Each discovery target is judged against its reference of the same run (no verdict is asserted: timings are not tests).
    for (const key of ["join_running_5", "startup_cpu"]) {
      assert.isAbove(results[key].targetRatio, 0)
      assert.isBoolean(results[key].met)
    }
  }, 180_000)

  it("npm pack makes a package that installs in an empty project and runs the quick example", () => {
    const pack = run("npm", ["pack", "--ignore-scripts", "--pack-destination", scratch], { cwd: root })
    assert.strictEqual(pack.status, 0, pack.stderr)
    const tarball = readdirSync(scratch).find((f) => f.endsWith(".tgz"))!
    const project = join(scratch, "project")
    run("mkdir", ["-p", project], { cwd: scratch })
    writeFileSync(join(project, "package.json"), JSON.stringify({ name: "empty", private: true, type: "module" }))
    const install = run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", join(scratch, tarball)], { cwd: project, timeout: 300_000 })
    assert.strictEqual(install.status, 0, install.stderr)
    for (const f of ["member.ts", "member.mjs", "run.ts"]) copyFileSync(`${root}examples/quick/${f}`, join(project, f))
    // As a user would run it: no development condition, the package's built code.
    const env = { ...process.env, NODE_OPTIONS: "", CLUSTER_COMM_PORT: String(testCluster(16).port) }
    const quick = run(process.execPath, ["run.ts"], { cwd: project, env, timeout: 60_000 })
    assert.strictEqual(quick.status, 0, quick.stdout + quick.stderr)
    assert.include(quick.stdout, "service_three sees service_one, service_two")
    assert.include(quick.stdout, `service_one received "Hello, Bar!" from service_three by tcp`)
    // The same example on the Promise API: the bundled dist/promise.mjs, nothing else installed.
    const promised = run(process.execPath, ["run.ts", "--promise"], { cwd: project, env, timeout: 60_000 })
    assert.strictEqual(promised.status, 0, promised.stdout + promised.stderr)
    assert.include(promised.stdout, "service_three sees service_one, service_two")
    assert.include(promised.stdout, `service_one received "Hello, Bar!" from service_three by tcp`)
    // The Schemas' entry, built: it decodes with the main entry's codec.
    const leave = { _tag: "Leave", sender: { hostId: "0123456789ab", instance: "0123456789abcdef", name: "pkg" } }
    const schema = run(process.execPath, [
      "--input-type=module",
      "-e",
      `import { Schema } from "effect"; import { encodeFrame } from "cluster-comm"; import { FrameFromBytes } from "cluster-comm/schema"
       const frame = Schema.decodeUnknownSync(FrameFromBytes)(encodeFrame(${JSON.stringify(leave)}))
       console.log(frame._tag, frame.sender.name)`
    ], { cwd: project, env })
    assert.strictEqual(schema.stdout.trim(), "Leave pkg", schema.stderr)
    // The installed command (the package's bin, built).
    const bin = run(join(project, "node_modules", ".bin", "cluster-comm"), ["--help"], { cwd: project, env })
    assert.strictEqual(bin.status, 0, bin.stderr)
    assert.include(bin.stdout, "doctor")
    // A stack trace through the Promise API's bundle names the source (its map follows the marked, minified file).
    const stack = run(process.execPath, [
      "--enable-source-maps",
      "--input-type=module",
      "-e",
      `import { join } from "cluster-comm/promise"
       await join({ name: "x", port: 99999 }).catch((e) => console.log(e._tag, e.stack.split("\\n")[1].trim()))`
    ], { cwd: project, env })
    assert.match(stack.stdout, /^JoinError at makeConfig \(.*node_modules\/cluster-comm\/src\/schema\/Config\.ts:\d+:\d+\)/, stack.stderr)
    // Both builds, though minified, name each function and class as exported, and print an error as Node prints its own.
    const named = `const misnamed = Object.entries(p).filter(([k, v]) => typeof v === "function" && v.name !== k).map(([k, v]) => k + " as " + v.name)
      const classes = Object.keys(p).filter((k) => typeof p[k] === "function" && /^[A-Z]/.test(k)).length
      const e = await p.join({ name: "x", port: 99999 }).catch((e) => e)
      console.log(JSON.stringify({ misnamed, classes, printed: require("node:util").inspect(e).split("\\n") }))`
    for (const [format, load] of [["module", `import * as p from "cluster-comm/promise"; import { createRequire } from "node:module"; const require = createRequire(import.meta.url)`], ["commonjs", `const p = require("cluster-comm/promise")`]]) {
      const script = format === "module" ? `${load}\n${named}` : `${load}\n;(async () => { ${named} })()`
      const out = run(process.execPath, [`--input-type=${format}`, "-e", script], { cwd: project, env })
      const { misnamed, classes, printed } = JSON.parse(out.stdout || "{}") as { misnamed: Array<string>; classes: number; printed: Array<string> }
      assert.deepStrictEqual(misnamed, [], `${format}: ${out.stderr}`)
      assert.isAtLeast(classes, 21)
      assert.strictEqual(printed[0], 'JoinError: invalid configuration field "port": must be an integer from 1 to 65535')
      assert.match(printed[1]!, /^ {4}at /)
      assert.include(printed, "  reason: 'InvalidConfig',")
    }
    // A CommonJS program's `require` takes the entry's CommonJS build: two members meet, send and query on loopback.
    const cluster = testCluster(23)
    writeFileSync(join(project, "program.cjs"), `
      const { join, HookPoint } = require("cluster-comm/promise")
      const config = (name) => ({ name, port: ${cluster.port}, address: "${cluster.address}", heartbeat: "100 millis" })
      ;(async () => {
        console.log(require("node:path").basename(require.resolve("cluster-comm/promise")))
        await join({ name: "x", port: 99999 }).catch((e) => console.log(e._tag, e instanceof Error, e.stack.split("\\n")[1].trim()))
        const [a, b] = [await join(config("cjs-a"), { leaveOnSignals: false }), await join(config("cjs-b"), { leaveOnSignals: false })]
        while (a.resolve("cjs-b").length === 0) await new Promise((r) => setTimeout(r, 10))
        const heard = new Promise((resolve) => b.once("message", (m) => resolve(m.text)))
        b.hook(HookPoint.query("Q"), (q) => "re: " + q.text)
        await a.sendTo("cjs-b", "C", "hello")
        const answers = await a.queryAll({ target: "cjs-b", op: "Q", data: "ping", timeout: "2 seconds" })
        console.log(await heard, [...answers.responses.values()].map((r) => r.text).join())
        await a.leave(); await b.leave()
      })()`)
    const cjs = run(process.execPath, ["--enable-source-maps", "program.cjs"], { cwd: project, env, timeout: 30_000 })
    assert.deepStrictEqual(cjs.stdout.trim().split("\n").slice(0, 1), ["promise.cjs"], cjs.stderr)
    assert.match(cjs.stdout, /\nJoinError true at makeConfig \(.*node_modules\/cluster-comm\/src\/schema\/Config\.ts:\d+:\d+\)\nhello re: ping\n$/, cjs.stderr)
    // Tools read a package's version through its package.json.
    const version = run(process.execPath, ["-e", `console.log(require(require.resolve("cluster-comm/package.json")).version)`], { cwd: project, env })
    assert.strictEqual(version.stdout.trim(), JSON.parse(readFileSync(`${root}package.json`, "utf8")).version, version.stderr)
  }, 400_000)

  // A consumer's compiler sees the shipped declarations, whatever its resolution
  // settings; a wrong program fails, so the check can fail.
  const configs = {
    nodenext: { module: "NodeNext", moduleResolution: "NodeNext" },
    node16: { module: "Node16", moduleResolution: "Node16" },
    bundler: { module: "ESNext", moduleResolution: "bundler" },
    exact: { module: "NodeNext", moduleResolution: "NodeNext", exactOptionalPropertyTypes: true }
  }
  const typecheck = (project: string, config: keyof typeof configs, file: string) => {
    const compilerOptions = { strict: true, target: "ES2022", skipLibCheck: true, noEmit: true, ...configs[config] }
    writeFileSync(join(project, `tsconfig.${config}.json`), JSON.stringify({ compilerOptions, files: [file] }))
    return run(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", `tsconfig.${config}.json`], { cwd: project })
  }

  it("its declarations type-check a consumer's program under NodeNext, Node16, bundler and exactOptionalPropertyTypes, as ES module and CommonJS", () => {
    const project = join(scratch, "project")
    const program = readFileSync(`${root}test/consumer/program.ts`, "utf8")
    writeFileSync(join(project, "program.ts"), program)
    const promise = readFileSync(`${root}test/consumer/promise.ts`, "utf8")
    writeFileSync(join(project, "promise.ts"), promise)
    // The same program as CommonJS: its imports become `require`, which takes the entry's CommonJS build.
    writeFileSync(join(project, "promise.cts"), promise)
    const wrongPromise = promise.replace("member.sendTo(", "member.sendto(")
    assert.notStrictEqual(wrongPromise, promise)
    writeFileSync(join(project, "wrong-promise.ts"), wrongPromise)
    // A misspelled accessor and an error tag that does not exist.
    const wrong = program.replace("Cluster.sendTo(", "Cluster.sendto(").replace(`catchTag("JoinError"`, `catchTag("JoinFailed"`)
    assert.notStrictEqual(wrong, program)
    writeFileSync(join(project, "wrong.ts"), wrong)
    const tagLine = wrong.split("\n").findIndex((l) => l.includes(`catchTag("JoinFailed"`)) + 1
    for (const config of Object.keys(configs) as Array<keyof typeof configs>) {
      for (const file of ["program.ts", "promise.ts", ...(config === "bundler" ? [] : ["promise.cts"])]) {
        const good = typecheck(project, config, file)
        assert.strictEqual(good.status, 0, `${config}, ${file}: ${good.stdout}${good.stderr}`)
      }
      const badPromise = typecheck(project, config, "wrong-promise.ts")
      assert.match(badPromise.stdout, /wrong-promise\.ts\(\d+,\d+\): error TS2551: Property 'sendto' does not exist .* Did you mean 'sendTo'\?/)
      const bad = typecheck(project, config, "wrong.ts")
      assert.notStrictEqual(bad.status, 0, `${config}: the wrong program type-checked`)
      assert.match(bad.stdout, /wrong\.ts\(\d+,\d+\): error TS2551: Property 'sendto' does not exist .* Did you mean 'sendTo'\?/)
      assert.include(bad.stdout, `wrong.ts(${tagLine},`)
      // Nothing else: the declarations themselves raise no error in the consumer.
      assert.notMatch(bad.stdout, /node_modules\/cluster-comm/)
    }
    // "Go to definition" lands in the shipped source.
    const map = JSON.parse(readFileSync(join(project, "node_modules/cluster-comm/dist/types/services/Cluster.d.ts.map"), "utf8"))
    assert.deepStrictEqual(map.sources, ["../../../src/services/Cluster.ts"])
    assert.isTrue(existsSync(join(project, "node_modules/cluster-comm/dist/types/services", map.sources[0])))
  }, 120_000)
})
