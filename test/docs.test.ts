import { existsSync, readdirSync, readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"

// The pages a newcomer reads link into each other by heading; a heading renamed
// or a section moved to another page must not leave a link going nowhere.
const root = fileURLToPath(new URL("..", import.meta.url))
const pages = ["README.md", "CHANGELOG.md", ...readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)]
/** `make` for a page, made once: each page is read and parsed a single time. */
const perPage = <A>(make: (page: string) => A) => {
  const made = new Map<string, A>()
  return (page: string): A => {
    if (!made.has(page)) made.set(page, make(page))
    return made.get(page)!
  }
}
/** A page's text without its code blocks (where `](` and `#` are code, not links and headings). */
const textOf = perPage((page) => readFileSync(join(root, page), "utf8").replace(/```[\s\S]*?```/g, ""))

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
const slug = (heading: string) => heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/ /g, "-")

/** A page's anchors, a repeated heading numbered as GitHub numbers it. */
const anchorsOf = perPage((page) => {
  const seen = new Map<string, number>()
  const anchors = new Set<string>()
  for (const [, heading] of textOf(page).matchAll(/^#{1,6}\s+(.*)$/gm)) {
    const base = slug(heading!)
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    anchors.add(n === 0 ? base : `${base}-${n}`)
  }
  return anchors
})

/** Every relative link of a page that does not reach a file, or a heading of it. */
const brokenLinks = (page: string): Array<string> => {
  const broken: Array<string> = []
  for (const [, target] of textOf(page).matchAll(/\]\(([^)\s]+)\)/g)) {
    if (/^[a-z]+:/.test(target!)) continue
    const [path = "", anchor] = target!.split("#")
    const file = path === "" ? page : join(dirname(page), path)
    if (!existsSync(join(root, file))) broken.push(`${target} (no such file)`)
    else if (anchor !== undefined && file.endsWith(".md") && !anchorsOf(file).has(anchor)) broken.push(`${target} (no such heading)`)
  }
  return broken
}

describe("the docs' links", () => {
  it("reach a file and a heading that exist, from every page", () => {
    for (const page of pages) assert.deepStrictEqual(brokenLinks(page), [], page)
  })

  it("are read as GitHub reads them", () => {
    // The anchors the pages use most: code, parentheses, commas and dates in a heading.
    assert.strictEqual(slug("Beyond one LAN (`--only reach`)"), "beyond-one-lan---only-reach")
    assert.strictEqual(
      slug("A fourth session: what a page fault costs (2026-12-04, later)"),
      "a-fourth-session-what-a-page-fault-costs-2026-12-04-later"
    )
    const linked = pages.flatMap((page) => [...textOf(page).matchAll(/\]\(([^)\s:]+#[^)\s]+)\)/g)])
    assert.isAbove(linked.length, 10)
  })
})
