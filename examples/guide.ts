/**
 * The guides' snippets as code (docs/hooks.md, channels.md, tags.md, queries.md,
 * security.md): one function a section, each the snippet the guide shows, made
 * runnable. `test/guide.test.ts` runs them against live
 * members, so the guides cannot drift from what the library does.
 *
 * Each takes the member it runs as (`Cluster` in its context) and the names of
 * the others, and returns what it saw.
 */
import { Effect, Stream } from "effect"
import { Cluster, HookPoint, HookRejected } from "cluster-comm"
import { sealChannel } from "./encrypted-channel/seal.ts"

/** Hooks: upper-case every "C" message before anyone sees it, refuse "X" outright. */
export const hooks = Effect.gen(function*() {
  yield* Cluster.hook(HookPoint.op("C", "receive"), (m) => Effect.succeed(m.with({ data: m.text.toUpperCase() })))
  yield* Cluster.hook(HookPoint.op("X", "receive"), () =>
    Effect.fail(new HookRejected({ point: "op X receive", reason: "not accepted here" })))
})

/** Channels: join 7, send on it by broadcast and directly. */
export const channels = (peer: string) =>
  Effect.gen(function*() {
    yield* Cluster.channels.join(7)
    yield* Cluster.broadcast("S", "for channel 7 only", { channel: 7 })
    yield* Cluster.sendTo(peer, "S", "direct, on 7", { channel: 7 })
    return yield* Cluster.channels.list
  })

/** An encrypted channel: key holders read it, others see sealed bytes. */
export const encrypted = (key: Uint8Array) =>
  Effect.gen(function*() {
    yield* sealChannel(7, key) // join 7, seal on send, open on receive
    yield* Cluster.broadcast("S", "the plan", { channel: 7 })
  })

/** Tags and resolution: the modifiers in order, then the query forms. */
export const tags = Effect.gen(function*() {
  yield* Cluster.updateTags("eu") // append (the default)
  yield* Cluster.updateTags({ remove: ["beta"] })
  yield* Cluster.updateTags({ map: ["v1", "v2"] }) // rename, only if v1 is there
  yield* Cluster.updateTags({ mappend: ["v1", "v2"] }) // remove v1 if there, add v2
  return yield* Cluster.tags
})

export const resolution = Effect.gen(function*() {
  const web = yield* Cluster.resolver({ has: ["web"] }, { not: ["beta"] }) // all of / none of
  const exact = yield* Cluster.resolver({ exact: ["web", "eu"] }) // these tags and no others
  const some = yield* Cluster.resolver({ some: ["db-*", "cache-*"], match: "glob" })
  const regex = yield* Cluster.resolver({ has: ["127\\.0\\..*"], match: "regex" })
  const names = (s: ReadonlyArray<{ readonly name: string }>) => s.map((x) => x.name).sort()
  return { web: names(web), exact: names(exact), some: names(some), regex: names(regex) }
})

/** Queries: the responder, then the asker gathering everything, then as it comes. */
export const responder = Cluster.hook(HookPoint.query("LOAD"), () => Effect.succeed("0.42"))

export const asker = Effect.gen(function*() {
  const { responses, errors, missing, complete } = yield* Cluster.queryAll({
    target: "worker",
    op: "LOAD",
    data: "",
    timeout: "2 seconds"
  })
  const streamed = yield* Cluster.query({ target: { where: [{ has: ["worker"] }] }, op: "LOAD", data: "" }).pipe(
    Stream.map((e) => e._tag),
    Stream.runCollect
  )
  return { responses: [...responses.values()].map((r) => r.text), errors: errors.size, missing: missing.length, complete, streamed }
})

/** Security: key rotation on a running member, step by step. */
export const rotate = (newSecret: string) =>
  Effect.gen(function*() {
    yield* Cluster.keyring.install({ id: 2, secret: newSecret })
    yield* Cluster.keyring.use(2)
    yield* Cluster.keyring.remove(1)
    return yield* Cluster.keyring.list
  })
