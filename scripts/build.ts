/**
 * `npm run build`: the package's entries (`dist/index.mjs`, `dist/schema.mjs`
 * and their shared chunks, Effect left external), their functions marked for
 * eager compiling (see eager.ts); then the bundles built on them: the bench's
 * processes, which run the library as deployed, and the command-line tool.
 */
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
const built = ["dist/index.mjs", "dist/schema.mjs", ...readdirSync("dist/chunks").map((f) => join("dist/chunks", f))]
for (const file of built.filter((f) => f.endsWith(".mjs"))) {
  const { code, functions } = eager(readFileSync(file, "utf8"))
  writeFileSync(file, code)
  console.log(`  ${file}: ${functions} functions marked for eager compiling`)
}

// The bench's processes resolve `cluster-comm` to dist/index.mjs: they run the library as deployed.
await esbuild.build({
  ...node,
  entryPoints: ["bench/member.ts", "bench/peer.ts", "bench/scale.ts"],
  minify: true,
  outdir: "dist/bench",
  outExtension: { ".js": ".mjs" }
})
await esbuild.build({
  ...node,
  entryPoints: ["src/cli/main.ts"],
  minify: true,
  banner: { js: "#!/usr/bin/env node" },
  outfile: "dist/cli.mjs"
})
