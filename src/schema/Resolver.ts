/**
 * Resolver queries: typed clauses instead of the Tcl package's string DSL.
 * Each clause narrows the services left by the one before:
 * - `has`: every pattern matches one of the service's terms
 * - `not`: no pattern matches any of its terms
 * - `exact`: its tags are exactly these: every pattern matches a tag, every tag a pattern
 * - `some`: at least one pattern matches one of its terms
 * A service's terms are its tags, name, id, host id, address, and `localhost`
 * when it is on this host. Patterns match as `equal` (default), `glob`
 * (`*`, `?`, `[...]`) or `regex` (JavaScript syntax, whole term).
 */
import * as Data from "effect/Data"
import type { Service } from "./Service.ts"

export type Matching = "equal" | "glob" | "regex"

export type Clause =
  | { readonly has: ReadonlyArray<string>; readonly match?: Matching }
  | { readonly not: ReadonlyArray<string>; readonly match?: Matching }
  | { readonly exact: ReadonlyArray<string>; readonly match?: Matching }
  | { readonly some: ReadonlyArray<string>; readonly match?: Matching }

/** A query that cannot run: an invalid regular expression, or an empty clause. */
export class InvalidQuery extends Data.TaggedError("InvalidQuery")<{ readonly message: string }> {}

/** What a term or pattern is matched against. */
export const termsOf = (s: Service): ReadonlyArray<string> =>
  s.local ? [...s.tags, s.name, s.id, s.hostId, s.address, "localhost"] : [...s.tags, s.name, s.id, s.hostId, s.address]

const globToRegExp = (glob: string): RegExp => {
  let source = ""
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === "*") source += ".*"
    else if (c === "?") source += "."
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1)
      if (end < 0) source += "\\["
      else {
        const body = glob.slice(i + 1, end).replace(/^!/, "^").replace(/[\\\]]/g, "\\$&")
        source += `[${body}]`
        i = end
      }
    } else source += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")
  }
  return new RegExp(`^${source}$`, "s")
}

type Test = (term: string) => boolean

const compilePattern = (pattern: string, match: Matching): Test | InvalidQuery => {
  if (match === "equal") return (term) => term === pattern
  if (match === "glob") {
    const re = globToRegExp(pattern)
    return (term) => re.test(term)
  }
  try {
    const re = new RegExp(`^(?:${pattern})$`, "u")
    return (term) => re.test(term)
  } catch (e) {
    return new InvalidQuery({ message: `invalid regex ${JSON.stringify(pattern)}: ${(e as Error).message}` })
  }
}

/** Compiles clauses into one predicate, or says why they cannot run. */
export const compileQuery = (clauses: ReadonlyArray<Clause>): ((s: Service) => boolean) | InvalidQuery => {
  const steps: Array<(s: Service) => boolean> = []
  for (const clause of clauses) {
    const [kind, patterns] = "has" in clause ? ["has", clause.has] as const :
      "not" in clause ? ["not", clause.not] as const :
      "exact" in clause ? ["exact", clause.exact] as const :
      ["some", clause.some] as const
    if (patterns.length === 0 && kind !== "exact") return new InvalidQuery({ message: `a "${kind}" clause needs patterns` })
    const tests: Array<Test> = []
    for (const p of patterns) {
      const test = compilePattern(p, clause.match ?? "equal")
      if (test instanceof InvalidQuery) return test
      tests.push(test)
    }
    const anyTerm = (s: Service, test: Test) => termsOf(s).some(test)
    steps.push(
      kind === "has" ? (s) => tests.every((t) => anyTerm(s, t)) :
      kind === "not" ? (s) => !tests.some((t) => anyTerm(s, t)) :
      kind === "some" ? (s) => tests.some((t) => anyTerm(s, t)) :
      (s) => tests.every((t) => s.tags.some(t)) && s.tags.every((tag) => tests.some((t) => t(tag)))
    )
  }
  return (s) => steps.every((step) => step(s))
}
