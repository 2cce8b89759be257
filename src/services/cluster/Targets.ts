/**
 * Who a message or a query goes to: a service, several, resolve terms, or
 * `{ where }` clauses, made into the list of services to send to.
 *
 * Contract: a term that matches nothing fails with `ServiceNotFound` (naming
 * it); clauses that do not compile fail with `InvalidQuery`; clauses that
 * match nothing give an empty list. A service named by several terms is in
 * the list once.
 */
import * as Effect from "effect/Effect"
import { ServiceNotFound } from "../../schema/Errors.ts"
import { type Clause, compileQuery, InvalidQuery, termsOf } from "../../schema/Resolver.ts"
import type { Service } from "../../schema/Service.ts"
import type { Registry } from "../Registry.ts"

/** Who to send to: a service, several, or resolve terms (every term must match). */
export type Targets = Service | string | ReadonlyArray<Service | string> | { readonly where: ReadonlyArray<Clause> }

/** One service given as itself (the common case: no resolving to do). */
export const isOneService = (targets: Targets): targets is Service =>
  typeof targets === "object" && !Array.isArray(targets) && !("where" in targets)

const matches = (s: Service, term: string) => termsOf(s).includes(term)

export const makeTargets = (registry: Registry["Service"]) => {
  const services = registry.list

  /** Services matching every term (a tag, a name, an id, a host id, an address, `localhost`). */
  const resolve = (...terms: ReadonlyArray<string>) =>
    Effect.map(services, (all) => all.filter((s) => terms.every((t) => matches(s, t))))

  /** Services passing every clause, in order. */
  const resolver = (...clauses: ReadonlyArray<Clause>) =>
    Effect.suspend(() => {
      const test = compileQuery(clauses)
      return test instanceof InvalidQuery ? Effect.fail(test) : Effect.map(services, (all) => all.filter(test))
    })

  const targetsOf = (targets: Targets): Effect.Effect<ReadonlyArray<Service>, ServiceNotFound | InvalidQuery> =>
    isOneService(targets) ? Effect.succeed([targets]) : Effect.gen(function*() {
      if (typeof targets === "object" && "where" in targets) return yield* resolver(...targets.where)
      const list = typeof targets === "string" || !Array.isArray(targets) ? [targets as Service | string] : targets
      const found: Array<Service> = []
      for (const t of list) {
        if (typeof t !== "string") {
          found.push(t)
          continue
        }
        const matched = yield* resolve(t)
        if (matched.length === 0) return yield* new ServiceNotFound({ terms: [t] })
        found.push(...matched)
      }
      // One frame per service, even when several terms name it.
      return [...new Map(found.map((s) => [s.id, s])).values()]
    })

  return { services, resolve, resolver, targetsOf }
}

export type TargetsOf = ReturnType<typeof makeTargets>["targetsOf"]
