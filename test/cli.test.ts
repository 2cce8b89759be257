import { spawn, spawnSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { HookPoint } from "cluster-comm"
import { collect, eventually, leavable, member, testCluster } from "./helpers.ts"
import { canRunRedis, startRedis } from "./support/redis.ts"

// The real command, run as a child process (the source the binary is built from).
const main = fileURLToPath(new URL("../src/cli/main.ts", import.meta.url))
const where = testCluster(14)
const flags = ["--port", String(where.port), "--address", where.address]

const cli = (...args: ReadonlyArray<string>) =>
  Effect.promise(() =>
    new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const child = spawn(process.execPath, [main, ...args], { stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      let err = ""
      child.stdout.on("data", (c: Buffer) => (out += c.toString()))
      child.stderr.on("data", (c: Buffer) => (err += c.toString()))
      const guard = setTimeout(() => child.kill("SIGKILL"), 20_000) // bounded; our own child
      child.on("exit", (code) => {
        clearTimeout(guard)
        resolve({ code, out, err })
      })
    })
  )

describe("the cluster-comm command", () => {
  it.live("members, send, broadcast and query against live members", () =>
    Effect.gen(function*() {
      const a = yield* member({ name: "cli-a", ...where, tags: ["web"] })
      const b = yield* member({ name: "cli-b", ...where })
      yield* a.hook(HookPoint.query("UP"), (q) => Effect.succeed(q.text.toUpperCase()))
      yield* eventually(a.resolve("cli-b"), (s) => s.length === 1)

      const listed = yield* cli("members", ...flags, "--json")
      assert.strictEqual(listed.code, 0, listed.err)
      const services = JSON.parse(listed.out) as Array<{ name: string; tags: Array<string> }>
      assert.includeMembers(services.map((s) => s.name), ["cli-a", "cli-b"])
      assert.deepStrictEqual(services.find((s) => s.name === "cli-a")?.tags, ["web"])
      const tableOut = yield* cli("members", ...flags)
      assert.match(tableOut.out, /^NAME\s+ID\s+ADDRESS\s+LOCAL\s+PROTOCOLS\s+TAGS\s+SOURCES\s+SEEN/m)
      assert.match(tableOut.out, /cli-a\s+\S+@cli-a\s+127\.0\.0\.1\s+yes\s+tcp:\d+ udp:\d+\s+web/)

      const atA = yield* collect(a, 2)
      const atB = yield* collect(b, 1)
      const sent = yield* cli("send", ...flags, "cli-a", "C", "hello from the shell")
      assert.strictEqual(sent.code, 0, sent.err)
      assert.match(sent.out, /^sent C to \S+@cli-a by tcp$/m)
      const cast = yield* cli("broadcast", ...flags, "C", "to everyone")
      assert.strictEqual(cast.code, 0, cast.err)
      assert.sameMembers((yield* Fiber.join(atA)).map((m) => m.text), ["hello from the shell", "to everyone"])
      assert.deepStrictEqual((yield* Fiber.join(atB)).map((m) => m.text), ["to everyone"])

      const asked = yield* cli("query", ...flags, "web", "UP", "shout")
      assert.strictEqual(asked.code, 0, asked.err)
      assert.match(asked.out, /^response from \S+@cli-a: SHOUT$/m)
    }), 60_000)

  it.live("watch prints services as they are found and lost", () =>
    Effect.gen(function*() {
      const child = spawn(process.execPath, [main, "watch", ...flags], { stdio: ["ignore", "pipe", "pipe"] })
      let out = ""
      child.stdout.on("data", (c: Buffer) => (out += c.toString()))
      yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
      yield* Effect.sleep("500 millis")
      const passing = yield* leavable({ name: "cli-passing", ...where })
      yield* eventually(Effect.sync(() => out), (o) => /found \S+@cli-passing 127\.0\.0\.1/.test(o))
      yield* passing.leave
      yield* eventually(Effect.sync(() => out), (o) => /lost \S+@cli-passing 127\.0\.0\.1 \(left\)/.test(o))
      void passing.cluster
    }), 30_000)

  it.live("errors are one line with a meaningful exit code; help and doctor work", () =>
    Effect.gen(function*() {
      const nobody = yield* cli("send", ...flags, "--wait", "100", "nobody-here", "C", "x")
      assert.strictEqual(nobody.code, 1)
      assert.strictEqual(nobody.err.trim().split("\n").length, 1)
      assert.match(nobody.err, /^error: no service matches "nobody-here"/)
      const badPort = yield* cli("members", "--port", "70000")
      assert.strictEqual(badPort.code, 2)
      assert.match(badPort.err, /^error: .*port/)
      assert.strictEqual(badPort.err.trim().split("\n").length, 1)
      const help = yield* cli("send", "--help")
      assert.strictEqual(help.code, 0)
      assert.include(help.out, "--secret-file")
      const doctor = yield* cli("doctor", ...flags)
      assert.strictEqual(doctor.code, 0, doctor.out + doctor.err)
      assert.include(doctor.out, "heard its own beacon")
      const held = spawnSync(process.execPath, [main, "doctor", "--port", String(where.port), "--secret-file", "/no/such/file"], { encoding: "utf8" })
      assert.strictEqual(held.status, 2)
      assert.match(held.stderr, /^error: cannot read the secret file/)
    }), 60_000)

  it.live.skipIf(!canRunRedis())("--redis and --no-multicast reach members through Redis; doctor checks Redis and seeds", () =>
    Effect.gen(function*() {
      const redis = yield* startRedis({
        args: ["--user", "default", "off", "--user", "ops", "on", ">pw", "~cluster-comm:*", "&cluster-comm:*", "+@all"],
        auth: "ops:pw"
      })
      const beyond = [...flags, "--no-multicast", "--advertise", "127.0.0.1", "--redis", redis.url]
      yield* member({ name: "cli-redis", ...where, multicast: false, advertise: "127.0.0.1", redis: redis.url })
      const listed = yield* cli("members", ...beyond, "--json")
      assert.strictEqual(listed.code, 0, listed.err)
      const services = JSON.parse(listed.out) as Array<{ name: string; sources: Array<string> }>
      assert.deepStrictEqual(services.map((s) => [s.name, s.sources]), [["cli-redis", ["redis"]]])

      const doctor = yield* cli("doctor", ...beyond, "--seeds", "localhost:23999")
      assert.strictEqual(doctor.code, 0, doctor.out + doctor.err)
      assert.match(doctor.out, /ok {3}Redis at redis:\/\/127\.0\.0\.1:\d+ answers/)
      assert.notInclude(doctor.out, "pw") // the password is never printed
      assert.match(doctor.out, /round trip [\d.]+ ms/)
      assert.match(doctor.out, /clock offset to Redis -?\d+ ms/)
      assert.match(doctor.out, /1 member\(s\) registered/)
      assert.match(doctor.out, /seed localhost:23999 is .*127\.0\.0\.1/)
      assert.notInclude(doctor.out, "own beacon") // no multicast, no beacon check

      const wrong = yield* cli("doctor", ...flags, "--no-multicast", "--redis", redis.url.replace(":pw@", ":nope@"))
      assert.strictEqual(wrong.code, 1)
      assert.match(wrong.out, /FAIL cannot use Redis at .*: Redis refused the credentials/)
    }), 60_000)
})
