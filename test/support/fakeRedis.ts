/**
 * A fake `Redis` service on the Effect clock, for the Redis source's protocol
 * tests under TestClock: the three scripts (told apart by their text) done in
 * TypeScript with the same semantics as their Lua, pub/sub in memory, and
 * faults: `freeze` (commands hang, as with SIGSTOP), `cut` (one member's
 * commands fail, as when it loses its link), `flush` (restarted empty),
 * `deafen` (events lost), `slowReads` (events overtake a read's answer),
 * `failReads`.
 * It counts script calls, so tests can check the engine cost per beat.
 * The Lua itself runs against a real redis-server in test/sources/redis.test.ts.
 */
import { createHash } from "node:crypto"
import { Clock, Deferred, Effect, Layer } from "effect"
import * as Redis from "effect/persistence/Redis"

interface State {
  members: Map<string, number>
  descriptors: Map<string, string>
  rev: number
  epoch?: string
  last?: number
}

export interface FakeRedis {
  readonly layer: Layer.Layer<Redis.Redis>
  /** Script calls so far, by kind. */
  readonly calls: { heartbeat: number; read: number; leave: number }
  /** Every message published, in order. */
  readonly published: Array<string>
  /** Commands hang until `thaw`. */
  freeze(): void
  thaw(): void
  /** This member's commands fail (its link to Redis is cut). */
  cut(instance: string, on: boolean): void
  /** Everything gone, as after a restart without persistence. */
  flush(): void
  /** Pub/sub messages are lost while deaf (a subscriber that reconnected late). */
  deafen(on: boolean): void
  /** Full reads answer this long after they ran (a big reply on a busy link): events may overtake them. */
  slowReads(millis: number): void
  /** The next `count` full reads fail. */
  failReads(count: number): void
  /** How many members the set holds. */
  size(): number
}

const fresh = (): State => ({ members: new Map(), descriptors: new Map(), rev: 0 })

export const makeFakeRedis = (): FakeRedis => {
  let state = fresh()
  const scripts = new Map<string, "heartbeat" | "read" | "leave">()
  const listeners = new Map<string, Set<(m: Redis.RedisMessage) => void>>()
  let frozen: Deferred.Deferred<void> | undefined
  const cutOff = new Set<string>()
  const calls = { heartbeat: 0, read: 0, leave: 0 }
  const published: Array<string> = []

  let deaf = false
  let readDelay = 0
  let readFailures = 0
  const publish = (channel: string, message: string) => {
    published.push(message)
    if (deaf) return
    for (const l of listeners.get(channel) ?? []) l({ channel, message })
  }

  const heartbeat = (now: number, argv: ReadonlyArray<string>) => {
    const [instance, leaseText, descriptor, changed, channel, , epoch, returnText, sinceText, spareText, awayText] = argv as Array<string>
    const lease = Number(leaseText)
    const back = Math.max(lease, Number(returnText ?? lease))
    const since = Number(sinceText ?? 0)
    const spare = Number(spareText ?? 0)
    // No call for longer than a ttl: who expired since the last one is not known dead.
    const last = state.last ?? now
    const away = awayText !== undefined && now - last > Number(awayText)
    state.last = now
    state.epoch ??= epoch
    const due = [...state.members].filter(([m, at]) => at <= now && m !== instance).slice(0, 64)
    for (const [m, at] of due) {
      // Long expired: no one reached Redis to reap it in time (it was frozen); kept until all can be back.
      if (now - at > lease || (away && at > last)) state.members.set(m, now + back + 0.25)
      // Expired since a late caller's last beat: perhaps stalled with it; spared a little, once.
      else if (now - at <= since && at % 1 !== 0.5) state.members.set(m, now + spare + 0.5)
      else {
        state.members.delete(m)
        state.descriptors.delete(m)
        publish(channel!, `${++state.rev} lost ${m}`)
      }
    }
    const added = state.members.has(instance!) ? 0 : 1
    // Our own entry long expired (an outage): as long as the others get; an outage's grant is not shortened.
    const mine = state.members.get(instance!)
    const expiry = mine !== undefined && (now - mine > lease || (away && mine <= now)) ? now + back + 0.25
      : mine !== undefined && mine % 1 === 0.25 && mine > now + lease ? mine
      : now + lease
    state.members.set(instance!, expiry)
    if (added === 1 || changed === "1") {
      state.descriptors.set(instance!, descriptor!)
      publish(channel!, `${++state.rev} ${added === 1 ? "join" : "update"} ${instance} ${descriptor}`)
    }
    return [state.rev, now, added, state.epoch!]
  }

  const run = (kind: "heartbeat" | "read" | "leave", now: number, argv: ReadonlyArray<string>) => {
    calls[kind]++
    if (kind === "heartbeat") return heartbeat(now, argv)
    if (kind === "read") {
      const out: Array<unknown> = [state.rev]
      for (const [m] of [...state.members].sort((a, b) => a[1] - b[1])) out.push(m, state.descriptors.get(m) ?? "")
      return out
    }
    const [instance, channel] = argv as Array<string>
    if (state.members.delete(instance!)) {
      state.descriptors.delete(instance!)
      publish(channel!, `${++state.rev} left ${instance}`)
    }
    return 1
  }

  const send = <A>(command: string, ...args: ReadonlyArray<string>): Effect.Effect<A, Redis.RedisError> =>
    Effect.gen(function*() {
      if (frozen !== undefined) yield* Deferred.await(frozen)
      const now = yield* Clock.currentTimeMillis
      if (command === "SCRIPT" && args[0] === "LOAD") {
        const lua = args[1]!
        const sha = createHash("sha1").update(lua).digest("hex")
        scripts.set(sha, lua.includes("ZADD") ? "heartbeat" : lua.includes("ZRANGE', KEYS[1], 0, -1") ? "read" : "leave")
        return sha as A
      }
      if (command === "EVALSHA") {
        const kind = scripts.get(args[0]!)
        if (kind === undefined) return yield* new Redis.RedisError({ cause: new Error("NOSCRIPT") })
        const n = Number(args[1])
        const argv = args.slice(2 + n)
        const instance = kind === "read" ? undefined : argv[0]
        if (instance !== undefined && cutOff.has(instance)) return yield* new Redis.RedisError({ cause: new Error("connection lost") })
        if (kind === "read" && readFailures > 0) {
          readFailures--
          calls.read++
          return yield* new Redis.RedisError({ cause: new Error("read failed") })
        }
        const result = run(kind, now, argv) as A
        if (kind === "read" && readDelay > 0) yield* Effect.sleep(`${readDelay} millis`)
        return result
      }
      return yield* new Redis.RedisError({ cause: new Error(`fake Redis does not do ${command}`) })
    })

  const layer = Layer.effect(Redis.Redis, Redis.make({
    send,
    subscribe: (channel, onMessage) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          const set = listeners.get(channel) ?? new Set()
          listeners.set(channel, set)
          set.add(onMessage)
          return set
        }),
        (set) => Effect.sync(() => set.delete(onMessage))
      ).pipe(Effect.as(Effect.never)),
    connect: Effect.succeed({ send, close: Effect.void })
  }))

  return {
    layer,
    calls,
    published,
    freeze: () => {
      frozen ??= Deferred.makeUnsafe<void>()
    },
    thaw: () => {
      if (frozen !== undefined) Deferred.doneUnsafe(frozen, Effect.void)
      frozen = undefined
    },
    cut: (instance, on) => void (on ? cutOff.add(instance) : cutOff.delete(instance)),
    flush: () => {
      state = fresh()
    },
    deafen: (on) => {
      deaf = on
    },
    slowReads: (millis) => {
      readDelay = millis
    },
    failReads: (count) => {
      readFailures = count
    },
    size: () => state.members.size
  }
}
