/**
 * Tags: free-form labels a member advertises in its beacons, changed with the
 * Tcl package's modifiers, applied in order.
 */
import * as Data from "effect/Data"
import { MAX_TAG_BYTES, MAX_TAGS } from "./Frame.ts"

/**
 * One change: a tag or a list (appended), or a modifier.
 * - `append`: add these (already present ones are not repeated)
 * - `remove`: remove these
 * - `map: [old, new]`: rename `old` to `new`, only if `old` is there
 * - `mappend: [old, new]`: remove `old` if present, add `new`
 * - `replace`: the tags become exactly these
 */
export type TagChange =
  | string
  | ReadonlyArray<string>
  | { readonly append: ReadonlyArray<string> }
  | { readonly remove: ReadonlyArray<string> }
  | { readonly map: readonly [old: string, new: string] }
  | { readonly mappend: readonly [old: string, new: string] }
  | { readonly replace: ReadonlyArray<string> }

/** Tags that cannot go on the wire: too many, empty, or too long. */
export class TagError extends Data.TaggedError("TagError")<{ readonly message: string }> {}

const add = (tags: Array<string>, tag: string) => {
  if (!tags.includes(tag)) tags.push(tag)
}

/** The tags after `changes`, in order; a `TagError` if the result cannot be advertised. */
export const applyTagChanges = (
  current: ReadonlyArray<string>,
  changes: ReadonlyArray<TagChange>
): ReadonlyArray<string> | TagError => {
  let tags = [...current]
  for (const each of changes) {
    if (typeof each === "string") {
      add(tags, each)
      continue
    }
    if (Array.isArray(each)) {
      for (const t of each as ReadonlyArray<string>) add(tags, t)
      continue
    }
    const change = each as Exclude<TagChange, string | ReadonlyArray<string>>
    if ("append" in change) for (const t of change.append) add(tags, t)
    else if ("remove" in change) tags = tags.filter((t) => !change.remove.includes(t))
    else if ("map" in change) {
      const [from, to] = change.map
      const i = tags.indexOf(from)
      if (i >= 0) {
        tags.splice(i, 1)
        if (!tags.includes(to)) tags.splice(i, 0, to)
      }
    } else if ("mappend" in change) {
      const [from, to] = change.mappend
      tags = tags.filter((t) => t !== from)
      add(tags, to)
    } else tags = [...new Set(change.replace)]
  }
  return validTags(tags)
}

export const validTags = (tags: ReadonlyArray<string>): ReadonlyArray<string> | TagError => {
  if (tags.length > MAX_TAGS) return new TagError({ message: `at most ${MAX_TAGS} tags` })
  for (const t of tags) {
    const n = Buffer.byteLength(t)
    if (n < 1 || n > MAX_TAG_BYTES) return new TagError({ message: `tag ${JSON.stringify(t)}: tags are 1..${MAX_TAG_BYTES} bytes` })
  }
  return tags
}
