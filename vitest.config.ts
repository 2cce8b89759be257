import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Each file binds real sockets on the shared multicast port; files run in
    // parallel processes, which is exactly what the port sharing must survive.
    fileParallelism: true,
    // The JSON report is what .ci/run counts from.
    reporters: ["default", ["json", { outputFile: "test-results/vitest.json" }]]
  }
})
