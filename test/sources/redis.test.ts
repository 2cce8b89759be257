/**
 * The Redis source against a real redis-server on loopback: members with
 * multicast off find each other through it, talk directly, see crashes,
 * leaves, a frozen Redis (nobody lost, marked stale) and a Redis restarted
 * empty (everyone back, nobody lost); garbage in its keys is counted, never
 * fatal; sealed descriptors show Redis only ids and expiry times.
 */
import { readFileSync } from "node:fs"
import { NodeRedis } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Stream } from "effect"
import { Cluster, type ClusterEvent, ClusterLive, HookPoint } from "cluster-comm"
import { collect, eventually, leavable, member, testCluster } from "../helpers.ts"
import { hasCommand, startAgent } from "../support/hosts.ts"
import { canRunRedis, startRedis, testCertificates } from "../support/redis.ts"

const cluster = testCluster(42)
const base = { ...cluster, multicast: false, advertise: "127.0.0.1", heartbeat: "200 millis", ttl: "600 millis" } as const

const names = (c: Cluster["Service"]) => Effect.map(c.services, (ss) => ss.map((s) => s.name).sort().join())
const state = (c: Cluster["Service"]) => Effect.map(c.sources, (ss) => ss.find((s) => s.source === "redis")?.state)
/** Every loss a member sees from now on, as `name why`. */
const losses = (c: Cluster["Service"]) =>
  Effect.gen(function*() {
    const seen: Array<string> = []
    yield* c.events.pipe(
      Stream.runForEach((e: ClusterEvent) => Effect.sync(() => e._tag === "ServiceLost" && seen.push(`${e.service.name} ${e.why}`))),
      Effect.forkChild
    )
    yield* Effect.yieldNow
    return seen
  })

describe.skipIf(!canRunRedis())("redis source", () => {
  it.live("members find each other through Redis only, and exchange sendTo, broadcast and query", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const b = yield* member({ ...base, name: "b", redis: { url: redis.url, namespace: "default" } })
      yield* eventually(names(a), (n) => n === "b")
      yield* eventually(names(b), (n) => n === "a")
      const [seen] = yield* b.services
      assert.deepStrictEqual(seen!.sources, ["redis"])
      assert.isFalse(seen!.stale)
      yield* eventually(state(a), (s) => s === "up")

      const atB = yield* collect(b, 2)
      yield* a.sendTo("b", "C", "direct")
      yield* a.broadcast("B", "to all")
      assert.deepStrictEqual((yield* Fiber.join(atB)).map((m) => m.text).sort(), ["direct", "to all"])
      yield* b.hook(HookPoint.query("Q"), (q) => Effect.succeed(`re: ${q.text}`))
      const answered = yield* a.queryAll({ target: "b", op: "Q", data: "ping", timeout: "2 seconds" })
      assert.deepStrictEqual([...answered.responses.values()].map((r) => r.text), ["re: ping"])
    }))

  it.live("a leave is seen as a leave, not an expiry; a crash (SIGKILL) is noticed within a few heartbeats", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "watcher", redis: redis.url })
      const b = yield* leavable({ ...base, name: "leaver", redis: redis.url })
      const crashing = yield* startAgent(undefined, { ...base, name: "crasher", redis: redis.url })
      yield* eventually(names(a), (n) => n === "crasher,leaver", "5 seconds")
      const lost = yield* losses(a)
      yield* b.leave
      // Seen as a leave, not found missing at its expiry: what, not how fast (timings are the bench's).
      yield* eventually(Effect.sync(() => lost.join()), (l) => l === "leaver left", "2 seconds")
      assert.strictEqual(yield* names(a), "crasher")
      yield* crashing.kill("SIGKILL")
      // Its entry expires 440 ms after its last beat; the next script call reaps it.
      yield* eventually(names(a), (n) => n === "", "1500 millis")
      assert.deepStrictEqual(lost, ["leaver left", "crasher expired"])
    }))

  it.live("Redis frozen: nobody is lost, members only Redis knows are stale; thawed, all is well", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b")
      // Up (its first full read done) before the freeze: a read that hangs on it takes its own timeout.
      yield* eventually(state(a), (s) => s === "up")
      const lostAtA = yield* losses(a)
      yield* redis.freeze
      yield* eventually(state(a), (s) => s === "down", "3 seconds")
      const [stale] = yield* eventually(a.services, (ss) => ss[0]?.stale === true)
      assert.deepStrictEqual(stale!.sources, ["redis"])
      yield* Effect.sleep("3 seconds")
      assert.strictEqual(yield* names(a), "b")
      yield* redis.thaw
      yield* eventually(state(a), (s) => s === "up", "5 seconds")
      yield* eventually(a.services, (ss) => ss.length === 1 && ss[0]!.stale === false)
      yield* Effect.sleep("1 second")
      assert.strictEqual(yield* names(a), "b")
      assert.strictEqual(yield* names(b), "a")
      assert.deepStrictEqual(lostAtA, [])
    }))

  it.live("after Redis was away, a member that comes back later than the others is not reaped: all get time to reconnect", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      // Stands for a member whose link broke meanwhile and waits out its back-off.
      const late = yield* startAgent(undefined, { ...base, name: "late", redis: redis.url })
      yield* eventually(names(a), (n) => n === "late", "5 seconds")
      const lostAtA = yield* losses(a)
      yield* late.signal("SIGSTOP")
      yield* redis.freeze
      yield* Effect.sleep("3 seconds")
      yield* redis.thaw
      yield* eventually(state(a), (s) => s === "up", "5 seconds")
      // Well past one lease (440 ms) after Redis is back, within the time a reconnect may take.
      yield* Effect.sleep("2500 millis")
      yield* late.signal("SIGCONT")
      yield* eventually(a.services, (ss) => ss.length === 1 && ss[0]!.stale === false, "5 seconds")
      // Past the members' grace after trouble (5 s): still there, never lost.
      yield* Effect.sleep("3 seconds")
      assert.strictEqual(yield* names(a), "late")
      assert.deepStrictEqual(lostAtA, [])
    }))

  it.live("Redis restarted empty: every member registers again, nobody is lost", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      const c = yield* member({ ...base, name: "c", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b,c")
      // Every member past its first full read: one made on the restarted,
      // empty set would let go of who had not registered again yet.
      yield* eventually(Effect.all([state(a), state(b), state(c)]), (s) => s.every((x) => x === "up"))
      const lostAtA = yield* losses(a)
      yield* redis.restart
      // Back in the set within a beat or so of the reconnect.
      yield* eventually(redis.cli("ZCARD", `cluster-comm:{default/${cluster.address}:${cluster.port}}:members`), (n) => n.trim() === "3", "5 seconds")
      yield* Effect.sleep("1500 millis")
      assert.strictEqual(yield* names(a), "b,c")
      assert.strictEqual(yield* names(c), "a,b")
      assert.deepStrictEqual(lostAtA, [])
      // A member that joins after the restart is found as usual.
      yield* member({ ...base, name: "d", redis: redis.url })
      yield* eventually(names(b), (n) => n === "a,c,d")
    }))

  it.live("a member whose process stalls in bursts is not reaped alive: its lease covers its slowest recent beat", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      // The watcher beats every 100 ms, so it reaps an expired member at once.
      const a = yield* member({ ...base, name: "watcher", heartbeat: "100 millis", redis: redis.url })
      const lost = yield* losses(a)
      // Beats every 400 ms; its lease on time is 880 ms.
      const stalling = yield* startAgent(undefined, { ...base, name: "stalling", heartbeat: "400 millis", ttl: "1200 millis", redis: redis.url })
      yield* eventually(names(a), (n) => n === "stalling")
      const instance = (yield* a.services)[0]!.instance
      const expiry = redis.cli("ZSCORE", `cluster-comm:{default/${cluster.address}:${cluster.port}}:members`, instance)
      const nextBeat = Effect.gen(function*() {
        const before = yield* expiry
        yield* eventually(expiry, (e) => e !== before)
      })
      /** Stalls it (SIGSTOP) for `millis`; returns once the beat that comes late after it is in. */
      const stall = (millis: number) =>
        Effect.gen(function*() {
          yield* stalling.signal("SIGSTOP")
          yield* Effect.sleep(`${millis} millis`)
          const before = yield* expiry
          yield* stalling.signal("SIGCONT")
          yield* eventually(expiry, (e) => e !== before)
        })
      // Stalls that grow, each right after a beat and within the lease it asked for.
      yield* nextBeat
      yield* stall(600)
      yield* stall(1000)
      // One beat on time, then a stall of 1.4 s: a lease that covered only
      // that last interval (880 ms) would let the watcher reap it alive.
      yield* nextBeat
      yield* stall(1400)
      yield* Effect.sleep("500 millis")
      assert.deepStrictEqual(lost, [])
      assert.strictEqual(yield* names(a), "stalling")
    }))

  it.live("members of one process that stall together are not reaped by the first of them to wake", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b")
      yield* eventually(names(b), (n) => n === "a")
      const lostAtA = yield* losses(a)
      const lostAtB = yield* losses(b)
      yield* Effect.sleep("1 second") // beats on time: leases of about 440 ms
      // The whole process stalls 700 ms (a long collection, a busy handler):
      // both miss their beats, and the first to wake finds the other expired.
      yield* Effect.sync(() => {
        const until = Date.now() + 700
        while (Date.now() < until) {
          // busy
        }
      })
      yield* Effect.sleep("1 second")
      assert.deepStrictEqual([...lostAtA, ...lostAtB], [])
      assert.strictEqual(yield* names(a), "b")
      assert.strictEqual(yield* names(b), "a")
    }))

  it.live("Redis down at the start: the member joins anyway, and finds the others once Redis is there", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      yield* redis.kill
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const down = yield* eventually(a.sources, (ss) => ss.some((s) => s.source === "redis" && s.state === "down"))
      assert.match(down.find((s) => s.source === "redis")!.error ?? "", /ECONNREFUSED|connect/i)
      yield* redis.start
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b", "8 seconds")
      yield* eventually(names(b), (n) => n === "a")
    }))

  it.live("garbage in the cluster's keys and channel is dropped and counted, and members carry on", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      yield* eventually(state(a), (s) => s === "up") // subscribed, registered, read
      const prefix = `cluster-comm:{default/${cluster.address}:${cluster.port}}`
      yield* redis.cli("ZADD", `${prefix}:members`, "99999999999999", "0123456789abcdef")
      yield* redis.cli("HSET", `${prefix}:descriptors`, "0123456789abcdef", "bm90IGEgZGVzY3JpcHRvcg==")
      yield* redis.cli("ZADD", `${prefix}:members`, "99999999999999", "not an instance")
      // Revision 2, after a's join (1): an event a full read already holds would be passed over unread.
      yield* redis.cli("PUBLISH", `${prefix}:events`, "2 join 0123456789abcdef %%%")
      yield* redis.cli("PUBLISH", `${prefix}:events`, "garbage")
      yield* redis.cli("HINCRBY", `${prefix}:state`, "rev", "100") // a gap: a full read follows
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b")
      // Two bad events, then (the gap in revisions brings a full read) a bad entry and a bad descriptor.
      const stats = yield* eventually(a.stats, (s) => (s.drops["redis-invalid"] ?? 0) >= 4)
      assert.strictEqual(stats.drops["redis-invalid"], 4)
      assert.strictEqual(yield* names(b), "a")
      assert.strictEqual(yield* state(a), "up")
    }))

  it.live("with a secret, Redis holds sealed descriptors; a member without the key ignores them", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis()
      const secret = "correct horse battery staple"
      const a = yield* member({ ...base, name: "sealed-a", secret, redis: redis.url })
      const b = yield* member({ ...base, name: "sealed-b", secret, redis: redis.url })
      const outsider = yield* member({ ...base, name: "outsider", redis: redis.url })
      yield* eventually(names(a), (n) => n === "sealed-b")
      const descriptors = `cluster-comm:{default/${cluster.address}:${cluster.port}}:descriptors`
      yield* eventually(redis.cli("HLEN", descriptors), (n) => n.trim() === "3") // all three registered
      // HGETALL prints field, value, field, value: the key holders' names appear nowhere.
      const all = (yield* redis.cli("HGETALL", descriptors)).trim().split("\n")
      assert.strictEqual(all.length, 6) // three members
      const values = all.filter((_, i) => i % 2 === 1).map((v) => Buffer.from(v, "base64").toString("latin1"))
      assert.strictEqual(values.filter((v) => v.includes("outsider")).length, 1) // the control: plain is readable
      for (const v of values) assert.notInclude(v, "sealed-")
      const seen = yield* eventually(outsider.stats, (s) => (s.drops["unknown-key"] ?? 0) >= 2)
      assert.isAtLeast(seen.drops["unknown-key"] ?? 0, 2)
      assert.strictEqual(yield* names(outsider), "")
      assert.strictEqual(yield* names(b), "sealed-a")
    }))

  it.live("an ACL user and password in the URL", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis({
        // The ACL docs/reach.md gives: the cluster's keys and channels, nothing more.
        args: ["--user", "default", "off", "--user", "member", "on", ">s3cret", "~cluster-comm:*", "&cluster-comm:*",
          "+@read", "+@write", "+@scripting", "+@pubsub", "+time", "+ping", "+hello", "-flushall", "-flushdb"],
        cliArgs: ["--user", "member", "--pass", "s3cret", "--no-auth-warning"],
        auth: "member:s3cret"
      })
      const a = yield* member({ ...base, name: "a", redis: redis.url })
      const b = yield* member({ ...base, name: "b", redis: redis.url })
      yield* eventually(names(a), (n) => n === "b")
      yield* eventually(names(b), (n) => n === "a")
      // A wrong password: the source says why, and the member still runs.
      const wrong = yield* member({ ...base, name: "c", redis: redis.url.replace("s3cret", "wrong") })
      const status = yield* eventually(wrong.sources, (ss) => ss.some((s) => s.state === "down"))
      assert.match(status[0]!.error ?? "", /WRONGPASS|invalid|auth/i)
    }))

  it.live.skipIf(!hasCommand("openssl", ["version"]))("TLS: rediss:// with the CA given through a NodeRedis layer; without it, the source says why", () =>
    Effect.gen(function*() {
      const certs = yield* testCertificates
      const redis = yield* startRedis({ tls: certs })
      assert.match(redis.url, /^rediss:/)
      const layer = NodeRedis.layer({ url: redis.url, socket: { tls: true, ca: readFileSync(certs.ca) } })
      const a = yield* Layer.build(ClusterLive({ ...base, name: "tls-a" }, { redis: layer })).pipe(Effect.map((ctx) => Context.get(ctx, Cluster)))
      const b = yield* Layer.build(ClusterLive({ ...base, name: "tls-b" }, { redis: layer })).pipe(Effect.map((ctx) => Context.get(ctx, Cluster)))
      yield* eventually(names(a), (n) => n === "tls-b")
      yield* eventually(names(b), (n) => n === "tls-a")
      // The URL alone: the server's certificate is not trusted, and the source says so.
      const untrusted = yield* member({ ...base, name: "tls-c", redis: redis.url })
      const status = yield* eventually(untrusted.sources, (ss) => ss.some((s) => s.state === "down"))
      assert.match(status[0]!.error ?? "", /certificate|self.signed|verify/i)
    }))
})
