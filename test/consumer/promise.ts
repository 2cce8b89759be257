/**
 * A plain TypeScript consumer of `cluster-comm/promise`, type-checked by
 * test/package.test.ts against the packed package (never run there).
 */
import { HookPoint, join, JoinError, type Member, type Message, SendFailed } from "cluster-comm/promise"

export const main = async (): Promise<string> => {
  let member: Member
  try {
    member = await join({ name: "service_three", remote: 0 })
  } catch (e) {
    if (e instanceof JoinError) return `cannot join: ${e.field ?? e.reason}`
    throw e
  }
  member.on("message", (m: Message) => console.log(m.text))
  member.on("lost", (service, why) => console.log(service.name, why))
  const remove = member.hook(HookPoint.op("C", "receive"), (m) => m.with({ data: m.text.toUpperCase() }))
  await member.broadcast("C", "Hello, Foo!")
  const deliveries = await member.sendTo(member.resolve("service_one"), "C", "Hello, Bar!").catch((e: unknown) => {
    if (e instanceof SendFailed) return e.attempts.map((a) => ({ service: e.service, protocol: a.protocol }))
    throw e
  })
  const answers = await member.queryAll({ target: "service_two", op: "time", data: "now", signal: AbortSignal.timeout(500) })
  for await (const event of member.query({ target: "worker", op: "load", data: "" })) console.log(event._tag)
  const stop = new AbortController()
  for await (const m of member.messages({ signal: stop.signal })) if (m.op === "stop") stop.abort()
  {
    // Leaves at the end of the block.
    await using other = await join("service_four", { signal: AbortSignal.timeout(1000) })
    await other.sendTo("service_one", "C", "bye", { channel: 0, signal: stop.signal })
  }
  remove()
  await member.leave()
  return `${deliveries.length} ${answers.responses.size}`
}
