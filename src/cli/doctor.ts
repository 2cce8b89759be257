/**
 * The doctor's checks beyond multicast: is Redis reachable, does it take our
 * credentials, how far away is it (round trip) and how far apart are our
 * clocks (expiry runs on Redis' clock, so an offset is harmless, but a large
 * one says a host's time is wrong); do the seeds' names resolve.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redis from "effect/persistence/Redis"
import { parseSeed } from "../schema/Config.ts"
import { redisKeys } from "../services/sources/RedisScripts.ts"
import { resolveSeed } from "../services/sources/Seeds.ts"

/** One line of the doctor's report. */
export type Check = readonly [ok: boolean, text: string]

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** Why node-redis could not connect, for people: refused, credentials, TLS, or its own words. */
const reason = (e: unknown): string => {
  const inner = e instanceof Redis.RedisError ? e.cause : e
  const text = inner instanceof Error ? inner.message : String(inner)
  if (/WRONGPASS|NOAUTH|invalid username-password/i.test(text)) return `Redis refused the credentials (${text.split("\n")[0]})`
  if (/ECONNREFUSED/.test(text)) return `nothing listens there (${text})`
  return text.split("\n")[0]!
}

export const checkRedis = (url: string, namespace: string, group: string, port: number): Effect.Effect<ReadonlyArray<Check>> =>
  Effect.gen(function*() {
    const where = url.replace(/\/\/[^@/]*@/, "//") // never print a password
    const { layer } = yield* Effect.promise(() => import("@effect/platform-node/NodeRedis"))
    const built = yield* Layer.build(layer({ url, socket: { connectTimeout: 2000, reconnectStrategy: false } })).pipe(
      Effect.map((context) => Context.get(context, Redis.Redis)),
      Effect.timeout("3 seconds"),
      Effect.result
    )
    if (built._tag === "Failure") return [[false, `cannot use Redis at ${where}: ${reason(built.failure)}`]] as const
    const redis = built.success
    const checks: Array<Check> = [[true, `Redis at ${where} answers${url.startsWith("rediss:") ? " over TLS" : ""}`]]
    const rtts: Array<number> = []
    const offsets: Array<number> = []
    for (let i = 0; i < 5; i++) {
      const sent = performance.now()
      const before = Date.now()
      const time = yield* redis.send<ReadonlyArray<string>>("TIME").pipe(Effect.result)
      if (time._tag === "Failure") return [...checks, [false, `TIME failed: ${reason(time.failure)}`] as const]
      const rtt = performance.now() - sent
      rtts.push(rtt)
      const server = Number(time.success[0]) * 1000 + Number(time.success[1]) / 1000
      offsets.push(server - (before + rtt / 2))
    }
    checks.push([true, `round trip ${median(rtts).toFixed(2)} ms (median of 5)`])
    const offset = median(offsets)
    checks.push([Math.abs(offset) < 1000, `clock offset to Redis ${offset.toFixed(0)} ms${Math.abs(offset) < 1000 ? "" : ": a host's clock is wrong (expiry runs on Redis' clock, but logs will not line up)"}`])
    const keys = redisKeys(namespace, group, port)
    const members = yield* redis.send<number>("ZCARD", keys.members).pipe(Effect.result)
    checks.push(members._tag === "Success"
      ? [true, `${members.success} member(s) registered in namespace "${namespace}"`]
      : [false, `cannot read the cluster's keys: ${reason(members.failure)} (ACL: the user needs ~cluster-comm:* and &cluster-comm:*)`])
    return checks
  }).pipe(Effect.scoped)

export const checkSeeds = (seeds: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<Check>> =>
  Effect.forEach(seeds, (text) => {
    const seed = parseSeed(text)
    if (typeof seed === "string") return Effect.succeed([false, `seed ${text}: ${seed}`] as const)
    return resolveSeed(seed).pipe(
      Effect.map((addresses): Check =>
        addresses.length > 0
          ? [true, `seed ${text} is ${addresses.join(", ")}`]
          : [false, `seed ${text} resolves to no address`]
      ),
      Effect.catch((e) => Effect.succeed([false, `seed ${text} does not resolve: ${e.message}`] as const))
    )
  })
