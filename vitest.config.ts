import { defineConfig } from "vitest/config"

export default defineConfig({
  // In the repository "cluster-comm" is its TypeScript source (the "development"
  // export condition); the package's default is the built bundle.
  resolve: { conditions: ["development"] },
  ssr: { resolve: { conditions: ["development"] } },
  test: {
    // Child processes (members, agents, the quick example) resolve it the same way.
    env: { NODE_OPTIONS: "--conditions=development" },
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
