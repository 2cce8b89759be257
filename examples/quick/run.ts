/**
 * `npm run demo`: starts service_one and service_two, then service_three,
 * which finds them, broadcasts and sends; prints what each process says.
 * `--promise` runs the same members on the Promise API (member.mjs).
 */
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"

const member = fileURLToPath(new URL(process.argv.includes("--promise") ? "./member.mjs" : "./member.ts", import.meta.url))

const start = (name: string) => {
  const child = spawn(process.execPath, [...process.execArgv, member, name], { stdio: ["ignore", "pipe", "inherit"] })
  let buffered = ""
  const lines: Array<string> = []
  child.stdout.on("data", (chunk: Buffer) => {
    buffered += chunk.toString()
    let nl: number
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      lines.push(line)
      console.log(line)
    }
  })
  const joined = new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (lines.some((l) => l.includes("joined"))) {
        clearInterval(check)
        resolve()
      }
    }, 5)
  })
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
  return { child, joined, exited }
}

const one = start("service_one")
const two = start("service_two")
await Promise.all([one.joined, two.joined])
const three = start("service_three")
const code = await three.exited
await new Promise((r) => setTimeout(r, 100))
for (const m of [one, two]) m.child.kill("SIGTERM")
await Promise.all([one.exited, two.exited])
process.exit(code ?? 1)
