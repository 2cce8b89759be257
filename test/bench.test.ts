import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"

// Benchmarks are not tests: this only runs `npm run bench:quick` (small counts)
// so the bench never rots, and checks that every section produced its figures.
const root = fileURLToPath(new URL("..", import.meta.url))

describe("bench smoke run", () => {
  it("builds the bundle and runs every section with small counts", () => {
    const build = spawnSync("npm", ["run", "build"], { cwd: root, encoding: "utf8" })
    assert.strictEqual(build.status, 0, build.stderr)
    const run = spawnSync(process.execPath, [`${root}bench/run.ts`, "--quick"], { cwd: root, encoding: "utf8", timeout: 120_000 })
    assert.strictEqual(run.status, 0, run.stderr)
    const results = JSON.parse(readFileSync(`${root}bench/results/quick.json`, "utf8"))
    for (const key of ["discovery_2", "discovery_5", "join_running_5", "startup_cpu", "idle", "throughput_100B", "round_trip_100B"]) {
      assert.property(results, key)
    }
    assert.isAbove(results.throughput_100B.clusterMsgPerSec, 0)
    assert.isAbove(results.round_trip_100B.clusterP50Ms, 0)
  }, 180_000)
})
