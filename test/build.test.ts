import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { SourceMap } from "node:module"
import * as esbuild from "esbuild"
import { eager, remap } from "../scripts/eager.ts"

// Every form of function the build meets, with what it does.
const sample = `
export const double = (x) => x * 2
export const pair = (a, b) => ({ a, b })
export const curried = (a) => (b) => a + b
export const later = async (x) => { await null; return x + 1 }
export const pure = () => /* @__PURE__ */ Math.max(1, 2)
export const withDefault = (f = (x) => x + 10) => f(1)
export const counting = function* () { yield 1; yield 2 }
export const multi = (
  a,
  b
) => a - b
export class Counter {
  n = 1
  bump = () => this.n++
}
export function args() { return [1, 2].map(() => arguments.length) }
export const named = () => 0
export const bare = x => x + 1
export const bareLater = async x => x * 3
export const accessors = () => { const o = { n: 0, get more() { return this.n + 5 }, set less(v) { this.n = v - 1 } }; o.less = 3; return o.more }
`

describe("the build's eager marking", () => {
  const scratch = mkdtempSync(join(tmpdir(), "cluster-comm-eager-"))
  afterAll(() => rmSync(scratch, { recursive: true, force: true }))
  const load = async (code: string, name: string) => {
    const file = join(scratch, name)
    writeFileSync(file, code)
    return import(pathToFileURL(file).href)
  }

  it("wraps every function in parentheses and keeps what each does", async () => {
    const { code, functions } = eager(sample)
    const before = await load(sample, "before.mjs")
    const after = await load(code, "after.mjs")
    for (const m of [before, after]) {
      assert.strictEqual(m.double(4), 8)
      assert.deepStrictEqual(m.pair(1, 2), { a: 1, b: 2 })
      assert.strictEqual(m.curried(1)(2), 3)
      assert.strictEqual(await m.later(1), 2)
      assert.strictEqual(m.pure(), 2)
      assert.strictEqual(m.withDefault(), 11)
      assert.deepStrictEqual([...m.counting()], [1, 2])
      assert.strictEqual(m.multi(5, 3), 2)
      const counter = new m.Counter()
      counter.bump()
      assert.strictEqual(counter.n, 2)
      assert.deepStrictEqual(m.args(7, 8, 9), [3, 3])
      assert.strictEqual(m.named.name, "named")
      assert.strictEqual(m.bare(1), 2)
      assert.strictEqual(await m.bareLater(2), 6)
      assert.strictEqual(m.accessors(), 7)
    }
    // Each arrow became `(function`, but those that read `this` or `arguments` from around them
    // (an accessor's own `this`, in an object made inside one, is not from around it).
    assert.strictEqual(functions, 14)
    assert.strictEqual(code.match(/\(function|\(async function/g)?.length, 14)
    assert.deepStrictEqual(code.match(/=>[^\n]*/g), ["=> this.n++", "=> arguments.length) }"])
    assert.include(code, "/* @__PURE__ */ Math.max(1, 2)")
    // Source maps stay right by line.
    assert.strictEqual(code.split("\n").length, sample.split("\n").length)
  })

  it("marks only the functions wanted (those a rehearsal ran), by where they start", async () => {
    const wanted = new Set([sample.indexOf("(x) => x * 2"), sample.indexOf("x => x + 1")])
    const { code, functions } = eager(sample, (start) => wanted.has(start))
    assert.strictEqual(functions, 2)
    assert.include(code, "export const double = (function(x) { return ( x * 2) })")
    assert.include(code, "export const bare = (function(x) { return ( x + 1) })")
    assert.include(code, "export const pair = (a, b) => ({ a, b })")
    const after = await load(code, "wanted.mjs")
    assert.strictEqual(after.double(4), 8)
    assert.strictEqual(after.bare(1), 2)
    assert.deepStrictEqual(after.pair(1, 2), { a: 1, b: 2 })
  })

  it("leaves a function already in parentheses as it is", () => {
    const source = "export const f = (function() { return 1 })\nexport const g = (function*() { yield 1 })\n"
    const { code, functions } = eager(source)
    assert.deepStrictEqual({ code, functions }, { code: source, functions: 0 })
  })

  it("moves a source map's columns with the text, on a minified line", async () => {
    // The sample minified with its map, as the Promise API's bundle is built: a few long lines.
    const built = await esbuild.transform(sample, { minify: true, sourcemap: "external", sourcefile: "sample.js", format: "esm" })
    const { code, moved } = eager(built.code)
    const map = JSON.parse(built.map)
    const marked = new SourceMap({ ...map, mappings: remap(map.mappings, built.code, code, moved) })
    const original = new SourceMap(map)
    // Each of these tokens maps to the same source place from the marked code as from the code before.
    const placeOf = (text: string, at: number, m: SourceMap) => {
      const lines = text.slice(0, at).split("\n")
      const e = m.findEntry(lines.length - 1, lines.at(-1)!.length) as { originalLine: number; originalColumn: number }
      return [e.originalLine, e.originalColumn]
    }
    // Tokens that minifying leaves as they are, each once in the code.
    for (const token of ["*2", "+10", "await null", "Math.max", "yield 1", "this.n++", "arguments.length", "*3"]) {
      const before = built.code.indexOf(token)
      const after = code.indexOf(token)
      assert.isAtLeast(before, 0, token)
      assert.strictEqual(built.code.lastIndexOf(token), before, token)
      assert.deepStrictEqual(placeOf(code, after, marked), placeOf(built.code, before, original), token)
    }
    // And the marks did move the text (else this proves nothing).
    assert.isAbove(code.length, built.code.length + 100)
  })
})
