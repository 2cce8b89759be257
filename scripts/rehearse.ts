/**
 * A member's life in brief, rehearsed for the build: two members of one
 * process join a host-only cluster (loopback, TTL 0: nothing leaves the host),
 * find each other, exchange a message and a query, and leave. Run under
 * NODE_V8_COVERAGE, it tells the build which of the Promise bundle's
 * functions a member runs, the ones worth compiling at load (see eager.ts).
 *
 * Usage: node scripts/rehearse.ts <bundle.mjs or .cjs>; exits 0 once done, 1 if the
 * members did not meet within 5 s.
 */
import { pathToFileURL } from "node:url"
import { rehearsalConfig as config } from "./rehearsal.ts"

const bundle = process.argv[2]!
const { HookPoint, join } = await import(pathToFileURL(bundle).href)
const options = { leaveOnSignals: false }

const a = await join(config("rehearsal-a"), options)
const b = await join(config("rehearsal-b"), options)
const deadline = Date.now() + 5000
while (a.services().length === 0 || b.services().length === 0) {
  if (Date.now() > deadline) process.exit(1)
  await new Promise((resolve) => setTimeout(resolve, 10))
}
const heard = new Promise((resolve) => b.once("message", resolve))
b.hook(HookPoint.query("Q"), (q: { text: string }) => `re: ${q.text}`)
await a.sendTo("rehearsal-b", "C", "hello")
await a.broadcast("C", "to all")
await heard
await a.queryAll({ target: "rehearsal-b", op: "Q", data: "ping", timeout: "1 second" })
await a.leave()
await b.leave()
process.exit(0)
