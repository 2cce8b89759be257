/**
 * `npm run build`: the package's entries (`dist/index.mjs`, `dist/schema.mjs`
 * and their shared chunks, Effect left external), their functions marked for
 * eager compiling (see eager.ts); their declarations (`dist/types`); the
 * Promise API's bundle, Effect inside, for `import` and for `require`
 * (`dist/promise.mjs`, `dist/promise.cjs`); then the bundles built on them:
 * the bench's processes, which run the library as deployed, and the
 * command-line tool.
 */
import { spawnSync } from "node:child_process"
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import * as esbuild from "esbuild"
import { eager, remap } from "./eager.ts"

const node = { bundle: true, platform: "node", format: "esm", target: "node22", logLevel: "info" } as const

rmSync("dist/chunks", { recursive: true, force: true })
await esbuild.build({
  ...node,
  entryPoints: { index: "src/index.ts", schema: "src/schema/Schemas.ts" },
  splitting: true,
  packages: "external",
  sourcemap: true,
  outdir: "dist",
  chunkNames: "chunks/[name]-[hash]",
  // Compact, its names kept (stack traces read without the maps): less text to
  // read and decode at every load.
  minifyWhitespace: true,
  minifySyntax: true,
  outExtension: { ".js": ".mjs" }
})
/** Rewrites a built file with its functions (or those wanted) marked for eager compiling (see eager.ts). */
const markEager = (file: string, wanted?: (start: number) => boolean) => {
  const source = readFileSync(file, "utf8")
  const { code, functions, moved } = eager(source, wanted)
  writeFileSync(file, code)
  // Its map, moved with the text: stack traces and profiles still name the right place.
  if (existsSync(`${file}.map`)) {
    const map = JSON.parse(readFileSync(`${file}.map`, "utf8"))
    writeFileSync(`${file}.map`, JSON.stringify({ ...map, mappings: remap(map.mappings, source, code, moved) }))
  }
  console.log(`  ${file}: ${functions} functions marked for eager compiling`)
}

/**
 * The functions of the built files a member runs, by file and where they
 * start: a rehearsal (scripts/rehearse.ts for the Promise bundle,
 * rehearse-effect.ts for the Effect entry) under V8's coverage. Compiled at
 * load, they come from Node's compile cache at the next start; the rest (the
 * Tcl dialect, Redis, metrics) would only make the cache longer to read.
 * Undefined when the rehearsal did not complete (no multicast on loopback
 * here, say).
 */
const rehearsed = (script: string, entry: string): Map<string, Set<number>> | undefined => {
  const dir = mkdtempSync(join(tmpdir(), "cluster-comm-rehearsal-"))
  try {
    const run = spawnSync(process.execPath, [script, entry], {
      env: { ...process.env, NODE_V8_COVERAGE: dir },
      stdio: "inherit",
      timeout: 20_000
    })
    if (run.status !== 0) {
      console.log(`  ${entry}: the rehearsal did not complete; every function marked`)
      return undefined
    }
    const starts = new Map<string, Set<number>>()
    const builtHere = `${pathToFileURL(resolve("dist")).href}/`
    for (const report of readdirSync(dir)) {
      for (const { url, functions } of JSON.parse(readFileSync(join(dir, report), "utf8")).result) {
        if (!url.startsWith(builtHere)) continue
        const ran = starts.get(url) ?? new Set<number>()
        for (const fn of functions) if (fn.ranges[0].count > 0) ran.add(fn.ranges[0].startOffset)
        starts.set(url, ran)
      }
    }
    return starts
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
/** What to mark in a built file: what the rehearsal ran of it, or all of it when the rehearsal did not load it. */
const ranIn = (starts: Map<string, Set<number>> | undefined, file: string) => {
  const ran = starts?.get(pathToFileURL(resolve(file)).href)
  return ran === undefined ? undefined : (start: number) => ran.has(start)
}
const built = ["dist/index.mjs", "dist/schema.mjs", ...readdirSync("dist/chunks").map((f) => join("dist/chunks", f))]
// The Effect entry: what a member runs of it and of its chunks (the Tcl chunk and
// the schema entry, not loaded by a member of its own, wholly).
const effectEntryRan = rehearsed("scripts/rehearse-effect.ts", "dist/index.mjs")
for (const file of built.filter((f) => f.endsWith(".mjs"))) markEager(file, ranIn(effectEntryRan, file))

// Declarations from the source, with maps back into it. The source imports `./X.ts`
// (Node runs it as is); a consumer's compiler takes `./X.js`, which it resolves to `./X.d.ts`.
rmSync("dist/types", { recursive: true, force: true })
const tsc = spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" })
if (tsc.status !== 0) throw new Error(`tsc (declarations) exited with ${tsc.status}`)
const declarations = readdirSync("dist/types", { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".d.ts"))
for (const file of declarations.map((f) => join("dist/types", f))) {
  writeFileSync(file, readFileSync(file, "utf8").replace(/((?:from|import\()\s*"\.{1,2}\/[^"]*)\.ts"/g, '$1.js"'))
}
// The Promise entry's for `require`: the same declarations as a CommonJS module's,
// which a consumer compiling CommonJS under Node16 resolution takes without complaint.
copyFileSync("dist/types/promise.d.ts", "dist/types/promise.d.cts")
console.log(`  dist/types: ${declarations.length} declaration files`)

// The bench's processes resolve `cluster-comm` to dist/index.mjs: they run the library as deployed.
// The modules the library imports only when asked for (metrics served or read)
// stay outside, loaded from node_modules then: inlined, every member would parse
// Effect's http stack at its start (a bundler that splits chunks shares too much
// of Effect between them: 280 kB a member loads against 176 kB).
const loadedOnDemand = ["effect/observability/*", "effect/http/*", "effect/persistence/*", "@effect/platform-node/*"]
rmSync("dist/bench", { recursive: true, force: true })
await esbuild.build({
  ...node,
  entryPoints: ["bench/member.ts", "bench/peer.ts", "bench/scale.ts", "bench/reach-host.ts"],
  minify: true,
  // BENCH_ALLOC names allocation sites through these (without the sources themselves).
  sourcemap: true,
  sourcesContent: false,
  external: loadedOnDemand,
  outdir: "dist/bench",
  outExtension: { ".js": ".mjs" }
})
// The Promise API, one file with its own copy of the Effect modules it uses:
// a plain Node.js program installs nothing else and loads one module. Built
// twice: for `import`, and for `require`, which then needs no ES module
// loader (1-2 ms of a CommonJS program's start).
for (const [format, extension] of [["esm", ".mjs"], ["cjs", ".cjs"]] as const) {
  await esbuild.build({
    ...node,
    format,
    entryPoints: { promise: "src/promise.ts" },
    minify: true,
    // Maps into the shipped src/ (and Effect's own files), without a copy of every source inside.
    sourcemap: true,
    sourcesContent: false,
    external: loadedOnDemand,
    outdir: "dist",
    outExtension: { ".js": extension }
  })
  // Our own bundle, Effect's modules included: the functions a member runs are
  // marked for eager compiling (all of them when the rehearsal cannot run).
  const bundle = `dist/promise${extension}`
  markEager(bundle, ranIn(rehearsed("scripts/rehearse.ts", bundle), bundle))
}
// The bench's Promise API peer loads that file itself, as a user's program does.
await esbuild.build({
  ...node,
  entryPoints: ["bench/promise-peer.ts"],
  external: ["cluster-comm/promise"],
  outdir: "dist/bench",
  outExtension: { ".js": ".mjs" }
})
await esbuild.build({
  ...node,
  entryPoints: ["src/cli/main.ts"],
  minify: true,
  external: loadedOnDemand,
  banner: { js: "#!/usr/bin/env node" },
  outfile: "dist/cli.mjs"
})
