/**
 * The quick example on the Promise API, in plain JavaScript: no Effect to
 * learn. The same program as member.ts, one member a process.
 *   service_one, service_two: print what they receive with op "C".
 *   service_three: waits to know the other two, lists them, broadcasts
 *   "Hello, Foo!" to everyone and sends "Hello, Bar!" to service_one alone.
 * `node examples/quick/run.ts --promise` runs all three.
 */
import { HookPoint, join } from "cluster-comm/promise"

const name = process.argv[2] ?? "service_three"
const port = Number(process.env.CLUSTER_COMM_PORT ?? 23000)

const member = await join({ name, port })
// react to every message with op "C"
member.hook(HookPoint.op("C", "receive"), (msg) => {
  console.log(`${name} received "${msg.text}" from ${msg.from.name} by ${msg.protocol}`)
  return msg
})
console.log(`${name} joined as ${member.self.id}`)

if (name === "service_three") {
  // Discovery takes one round trip; wait (bounded) until both peers are known.
  const known = () => ["service_one", "service_two"].every((n) => member.services().some((s) => s.name === n))
  for (const started = Date.now(); !known() && Date.now() - started < 5000;) await new Promise((r) => setTimeout(r, 10))
  console.log(`${name} sees ${member.services().map((s) => s.name).sort().join(", ")}`)
  console.log(`${name} ips ${member.ips().join(", ")}`)

  await member.broadcast("C", "Hello, Foo!")
  const [delivery] = await member.sendTo(member.resolve("service_one"), "C", "Hello, Bar!")
  console.log(`${name} sent to ${delivery.service.name} by ${delivery.protocol}`)
  // Give the datagram a moment before leaving; the leave tells the others at once.
  await new Promise((r) => setTimeout(r, 200))
  await member.leave()
}
