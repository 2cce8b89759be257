/**
 * Marks every function of a built module for eager compiling. V8 compiles a
 * function lazily: it skims the function's text when it compiles the code
 * around it, and parses it again in full at its first call. A function
 * expression in parentheses, `(function`, is compiled at once with the code
 * around it (V8's heuristic for functions about to be called). For a member,
 * nearly all of the library's code runs at its start, so compiling it at once
 * saves the skim; with Node's compile cache, those functions come from the
 * cache instead of being compiled at all.
 *
 * Arrow functions become function expressions, except those that use `this`,
 * `arguments`, `super` or `new.target` (an arrow takes those from around it).
 * No line is added or removed; a source map's columns are moved with the
 * text (`remap`).
 */
import { decode, encode, type SourceMapSegment } from "@jridgewell/sourcemap-codec"
import ts from "typescript"

/** Whether an arrow function reads what a function expression would rebind. */
const takesFromAround = (arrow: ts.ArrowFunction): boolean => {
  let found = false
  const walk = (node: ts.Node): void => {
    if (found) return
    if (
      node.kind === ts.SyntaxKind.ThisKeyword || node.kind === ts.SyntaxKind.SuperKeyword || ts.isMetaProperty(node) ||
      (ts.isIdentifier(node) && node.text === "arguments")
    ) {
      found = true
      return
    }
    // A function, method, accessor or class of its own rebinds them; a nested arrow does not.
    if (
      ts.isFunctionDeclaration(node) || ts.isFunctionExpression(node) || ts.isClassLike(node) || ts.isMethodDeclaration(node) ||
      ts.isGetAccessorDeclaration(node) || ts.isSetAccessorDeclaration(node)
    ) return
    ts.forEachChild(node, walk)
  }
  ts.forEachChild(arrow, walk)
  return found
}

interface Edit {
  readonly at: number
  readonly text: string
  /** Original characters replaced from `at` (an arrow's `=>`). */
  readonly replaces: number
  readonly closes: boolean
  readonly order: number
}

export const eager = (
  source: string,
  /** Which functions to mark, by where they start in `source`; all when not given. */
  wanted?: (start: number) => boolean
): { readonly code: string; readonly functions: number; readonly moved: (offset: number) => number } => {
  const file = ts.createSourceFile("module.mjs", source, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS)
  const edits: Array<Edit> = []
  let order = 0
  let functions = 0
  const insert = (at: number, text: string, closes: boolean, replaces = 0) => {
    edits.push({ at, text, replaces, closes, order: order++ })
  }
  const visit = (node: ts.Node): void => {
    if ((ts.isFunctionExpression(node) || ts.isArrowFunction(node)) && wanted?.(node.getStart(file)) === false) {
      // left to be compiled at its first call, if it ever comes
    } else if (ts.isFunctionExpression(node) && !ts.isParenthesizedExpression(node.parent)) {
      functions++
      insert(node.getStart(file), "(", false)
      insert(node.getEnd(), ")", true)
    } else if (ts.isArrowFunction(node) && !takesFromAround(node)) {
      // Only inserted and replaced around the original text: its lines stay.
      functions++
      const start = node.getStart(file)
      const asyncKeyword = node.modifiers?.find((m) => m.kind === ts.SyntaxKind.AsyncKeyword)
      if (asyncKeyword === undefined) insert(start, "(function", false)
      else {
        insert(start, "(", false)
        insert(asyncKeyword.getEnd(), " function", false)
      }
      const parenthesized = node.getChildren(file).some((c) => c.kind === ts.SyntaxKind.OpenParenToken)
      if (!parenthesized) {
        insert(node.parameters[0]!.getStart(file), "(", false)
        insert(node.parameters.end, ")", true)
      }
      // `=>` itself gives way to the function's body.
      const block = ts.isBlock(node.body)
      insert(node.equalsGreaterThanToken.getStart(file), block ? "" : "{ return (", false, 2)
      insert(node.getEnd(), block ? ")" : ") })", true)
    }
    ts.forEachChild(node, visit)
  }
  visit(file)
  // At one place, closings come before openings, the innermost closing first.
  edits.sort((a, b) =>
    a.at - b.at || (a.closes !== b.closes ? (a.closes ? -1 : 1) : a.closes ? b.order - a.order : a.order - b.order)
  )
  let code = ""
  let from = 0
  for (const edit of edits) {
    code += source.slice(from, edit.at) + edit.text
    from = edit.at + edit.replaces
  }
  code += source.slice(from)
  return { code, functions, moved: mover(edits) }
}

/**
 * Where a character of the source is in the marked code: pushed on by what
 * was inserted before it (a character of a replaced `=>` goes to where its
 * replacement starts).
 */
const mover = (edits: ReadonlyArray<Edit>): ((offset: number) => number) => {
  const steps = edits.map((e) => ({ past: e.at + e.replaces, by: e.text.length - e.replaces })).sort((a, b) => a.past - b.past)
  const pasts = steps.map((s) => s.past)
  const sums: Array<number> = []
  let sum = 0
  for (const s of steps) sums.push(sum += s.by)
  return (offset) => {
    // The last step at or before `offset`, by binary search.
    let lo = 0
    let hi = pasts.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (pasts[mid]! <= offset) lo = mid + 1
      else hi = mid
    }
    return offset + (lo === 0 ? 0 : sums[lo - 1]!)
  }
}

/**
 * A source map's `mappings` for the marked code: the same segments, each
 * generated column moved as its character was. No line changes, but a
 * minified bundle is a few long lines, and there the columns are everything.
 */
export const remap = (mappings: string, source: string, code: string, moved: (offset: number) => number): string => {
  const startsOf = (text: string) => {
    const starts = [0]
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) starts.push(i + 1)
    return starts
  }
  const before = startsOf(source)
  const after = startsOf(code)
  return encode(decode(mappings).map((segments, l) =>
    segments.map((segment): SourceMapSegment => {
      const out = [...segment] as SourceMapSegment
      out[0] = moved(before[l]! + segment[0]) - after[l]!
      return out
    })
  ))
}
