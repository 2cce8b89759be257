import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { testCluster } from "../helpers.ts"

const runner = fileURLToPath(new URL("../../examples/quick/run.ts", import.meta.url))

/** Runs the quick example (three member processes) on a port of this test's own. */
const runQuick = (...args: ReadonlyArray<string>) => Effect.callback<{ readonly code: number | null; readonly lines: ReadonlyArray<string> }>((resume) => {
  const child = spawn(process.execPath, [runner, ...args], {
    env: { ...process.env, CLUSTER_COMM_PORT: String(testCluster(4).port) },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let out = ""
  child.stdout.on("data", (c: Buffer) => (out += c.toString()))
  child.stderr.on("data", (c: Buffer) => (out += c.toString()))
  // Bounded: a hung run is ended by its PID, and the test fails on its output.
  const guard = setTimeout(() => child.kill("SIGKILL"), 20_000)
  child.on("exit", (code) => {
    clearTimeout(guard)
    resume(Effect.succeed({ code, lines: out.split("\n").filter(Boolean) }))
  })
})

describe("the quick example as three processes", () => {
  for (const [form, args] of [["Effect", []], ["Promise", ["--promise"]]] as const) {
    it.live(`${form} API: three finds one and two, broadcasts to both and sends to one alone by tcp`, () =>
      Effect.gen(function*() {
        const { code, lines } = yield* runQuick(...args)
        const has = (line: string) => assert.include(lines, line, lines.join("\n"))
        assert.strictEqual(code, 0, lines.join("\n"))
        has("service_three sees service_one, service_two")
        has("service_three ips 127.0.0.1")
        has(`service_one received "Hello, Foo!" from service_three by udp`)
        has(`service_two received "Hello, Foo!" from service_three by udp`)
        has("service_three sent to service_one by tcp")
        has(`service_one received "Hello, Bar!" from service_three by tcp`)
        assert.notInclude(lines, `service_two received "Hello, Bar!" from service_three by tcp`)
        assert.isFalse(lines.some((l) => /service_three received/.test(l)), "a member does not hear its own broadcast")
      }), 30_000)
  }
})
