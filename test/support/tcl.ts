/**
 * Members of the original Tcl package ("tcl cluster" 1.1.8), run as test
 * peers from ../shared/tcl-cluster (outside the repository: a test peer, not
 * part of the project) inside a test host's network namespace.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import type { Host } from "./hosts.ts"
import { collectLines } from "./lines.ts"

const peer = fileURLToPath(new URL("../../../shared/tcl-cluster", import.meta.url))

/** Why the live Tcl tests cannot run here, or undefined when they can. */
export const tclMissing = (): string | undefined => {
  if (!existsSync(`${peer}/member.tcl`)) return `the Tcl package is not at ${peer} (CI has it)`
  try {
    // tclsh exits 0 after an error in a script it reads from stdin: say so with exit 1.
    execFileSync("tclsh", [], { input: "if {[catch {package require udp; package require struct::set}]} {exit 1}\n", stdio: ["pipe", "ignore", "ignore"] })
  } catch {
    return "tclsh with TclUDP and tcllib is not installed (scripts/test-tools.sh installs them)"
  }
  return undefined
}

export interface TclMember {
  readonly pid: number
  /** Every line it printed so far (the `[+ms TAG] ` prefix taken off). */
  readonly lines: ReadonlyArray<string>
  /** Waits (bounded) for a line matching `pattern`. */
  readonly waitFor: (pattern: RegExp, within?: number) => Effect.Effect<string, Error>
  /** Ends it by its PID with `signal` and waits for it to exit. */
  readonly kill: (signal: NodeJS.Signals) => Effect.Effect<void>
}

/**
 * Starts `member.tcl` in `host`: role `listen` (hooks log what they see,
 * queries are answered) or `drive` (the quick example's service_three);
 * ended by its PID when the scope closes.
 */
export const startTcl = (host: Host, tag: string, role: "listen" | "drive" | "quit", waitMs = 3000, lifeMs = 20_000) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const child: ChildProcess = spawn(
        "ip",
        ["netns", "exec", host.ns, "tclsh", `${peer}/member.tcl`, `${peer}/original`, tag, role, String(waitMs), String(lifeMs)],
        { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, FIXED_QUERY_HOOK: "1" } }
      )
      const collected = collectLines([child.stdout!, child.stderr!], (line) => line.replace(/^\[\+\s*\d+ [^\]]*\] /, ""), () => `Tcl member ${tag}`)
      const { lines } = collected
      const waitFor = (pattern: RegExp, within?: number) => collected.waitFor((l) => pattern.test(l), within)
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
      const kill = (signal: NodeJS.Signals) =>
        Effect.promise(() => {
          // `ip netns exec` runs tclsh in its own process (exec): the PID is tclsh's.
          child.kill(signal)
          return exited
        })
      return { child, member: { pid: child.pid!, lines, waitFor, kill } satisfies TclMember }
    }),
    ({ child }) =>
      Effect.sync(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
      })
  ).pipe(Effect.map(({ member }) => member))
