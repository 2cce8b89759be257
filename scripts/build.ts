/**
 * `npm run build`: the package's entries (`dist/index.mjs`, `dist/schema.mjs`
 * and their shared chunks, Effect left external), their functions marked for
 * eager compiling (see eager.ts); their declarations (`dist/types`); then the
 * bundles built on them: the bench's processes, which run the library as
 * deployed, and the command-line tool.
 */
import { spawnSync } from "node:child_process"
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as esbuild from "esbuild"
import { eager } from "./eager.ts"

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
  outExtension: { ".js": ".mjs" }
})
/** Rewrites a built file with its functions marked for eager compiling (see eager.ts). */
const markEager = (file: string) => {
  const { code, functions } = eager(readFileSync(file, "utf8"))
  writeFileSync(file, code)
  console.log(`  ${file}: ${functions} functions marked for eager compiling`)
}
const built = ["dist/index.mjs", "dist/schema.mjs", ...readdirSync("dist/chunks").map((f) => join("dist/chunks", f))]
for (const file of built.filter((f) => f.endsWith(".mjs"))) markEager(file)

// Declarations from the source, with maps back into it. The source imports `./X.ts`
// (Node runs it as is); a consumer's compiler takes `./X.js`, which it resolves to `./X.d.ts`.
rmSync("dist/types", { recursive: true, force: true })
const tsc = spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" })
if (tsc.status !== 0) throw new Error(`tsc (declarations) exited with ${tsc.status}`)
const declarations = readdirSync("dist/types", { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".d.ts"))
for (const file of declarations.map((f) => join("dist/types", f))) {
  writeFileSync(file, readFileSync(file, "utf8").replace(/((?:from|import\()\s*"\.{1,2}\/[^"]*)\.ts"/g, '$1.js"'))
}
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
  external: loadedOnDemand,
  outdir: "dist/bench",
  outExtension: { ".js": ".mjs" }
})
// The Promise API, one file with its own copy of the Effect modules it uses:
// a plain Node.js program installs nothing else and loads one module.
await esbuild.build({
  ...node,
  entryPoints: { promise: "src/promise.ts" },
  minify: true,
  // Maps into the shipped src/ (and Effect's own files), without a copy of every source inside.
  sourcemap: true,
  sourcesContent: false,
  external: loadedOnDemand,
  outdir: "dist",
  outExtension: { ".js": ".mjs" }
})
// Our own bundle, Effect's modules included: all of it marked for eager compiling.
markEager("dist/promise.mjs")
await esbuild.build({
  ...node,
  entryPoints: ["src/cli/main.ts"],
  minify: true,
  external: loadedOnDemand,
  banner: { js: "#!/usr/bin/env node" },
  outfile: "dist/cli.mjs"
})
