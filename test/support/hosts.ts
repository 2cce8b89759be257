/**
 * Test hosts in network namespaces: a bridge in a namespace of its own and N
 * hosts linked to it by veth pairs, all created by the test and removed when its
 * scope closes. Traffic between them never touches the machine's own
 * interfaces. Agents (test/support/agent.ts) run inside a host with `ip netns exec`.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { rmSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import type { ClusterConfigInput } from "cluster-comm"
import { collectLines } from "./lines.ts"

/** Namespaces need root (CI runs as root); elsewhere these suites are skipped. */
export const canUseNamespaces = (): boolean => {
  if (process.getuid?.() !== 0) return false
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
}

export const ip = (...args: ReadonlyArray<string>) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] })

/** Removes namespaces left by test runs whose process is gone (a crash, a kill). */
export const removeStale = () => {
  const list = execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
  for (const line of list.split("\n")) {
    const m = /^(cc-(\d+)-\S+)/.exec(line)
    if (m === null) continue
    try {
      process.kill(Number(m[2]), 0)
    } catch {
      ip("netns", "del", m[1]!)
      rmSync(`/etc/netns/${m[1]}`, { recursive: true, force: true })
    }
  }
}

export interface Host {
  readonly ns: string
  readonly address: string
  readonly iface: string
}

/** Whether a command runs here (`--version`, or the arguments given, answer). */
export const hasCommand = (command: string, args: ReadonlyArray<string> = ["--version"]): boolean => {
  try {
    execFileSync(command, args, { stdio: "ignore" })
    return true
  } catch {
    return false
  }
}

/** Whether `nft` (packet loss rules) can be used. */
export const canUseNft = (): boolean => hasCommand("nft")

/** Runs a command inside a host's namespace (e.g. `ip link set eth0 down`). */
export const inHost = (host: Host, ...command: ReadonlyArray<string>) =>
  Effect.sync(() => void execFileSync("ip", ["netns", "exec", host.ns, ...command], { stdio: ["ignore", "ignore", "pipe"] }))

/** Drops about `percent`% of the packets a host receives, at random (nftables `numgen`). */
export const lose = (host: Host, percent: number) =>
  Effect.gen(function*() {
    yield* inHost(host, "nft", "add", "table", "inet", "loss")
    yield* inHost(host, "nft", "add", "chain", "inet", "loss", "input", "{ type filter hook input priority 0; }")
    yield* inHost(host, "nft", "add", "rule", "inet", "loss", "input", "iifname", "eth0", "numgen", "random", "mod", "100", "<", String(percent), "drop")
  })

let lans = 0

/**
 * Links a host of one LAN to another LAN as well, by `eth1` (a multi-homed
 * host): returns the host as seen on that second LAN.
 */
export const addLink = (host: Host, lan: { readonly bridge: string; readonly subnet: number }, index: number): Host => {
  const address = `10.231.${lan.subnet}.${index}`
  ip("link", "add", "eth1", "netns", host.ns, "type", "veth", "peer", "name", `q${index}`, "netns", lan.bridge)
  ip("-n", lan.bridge, "link", "set", `q${index}`, "master", "br0", "up")
  ip("-n", host.ns, "addr", "add", `${address}/24`, "dev", "eth1")
  ip("-n", host.ns, "link", "set", "eth1", "up")
  return { ns: host.ns, address, iface: "eth1" }
}

/** A LAN of `n` hosts (10.231.X.1..n/24 on `eth0`), removed with the scope. */
export const makeLan = (n: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      removeStale()
      const id = `cc-${process.pid}-${lans++}`
      const subnet = 10 + (process.pid % 200) + lans
      const bridge = `${id}-br`
      const hosts: Array<Host> = []
      ip("netns", "add", bridge)
      ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
      ip("-n", bridge, "link", "set", "br0", "up")
      for (let i = 1; i <= n; i++) {
        const ns = `${id}-h${i}`
        const address = `10.231.${subnet}.${i}`
        ip("netns", "add", ns)
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", `p${i}`, "netns", bridge)
        ip("-n", bridge, "link", "set", `p${i}`, "master", "br0", "up")
        ip("-n", ns, "addr", "add", `${address}/24`, "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        hosts.push({ ns, address, iface: "eth0" })
      }
      return { hosts, bridge, subnet }
    }),
    ({ hosts, bridge }) =>
      Effect.sync(() => {
        for (const h of hosts) ip("netns", "del", h.ns)
        ip("netns", "del", bridge)
      })
  )

const agentPath = fileURLToPath(new URL("./agent.ts", import.meta.url))

export interface Agent {
  readonly pid: number
  /** Every JSON line the agent printed so far. */
  readonly lines: ReadonlyArray<Record<string, any>>
  /** Waits (bounded) for a line matching `match`. */
  readonly waitFor: (match: (line: Record<string, any>) => boolean, within?: number) => Effect.Effect<Record<string, any>, Error>
  /** Sends a command and waits for its reply. */
  readonly command: (cmd: Record<string, unknown>) => Effect.Effect<Record<string, any>, Error>
  /** Sends a command without waiting for a reply. */
  readonly tell: (cmd: Record<string, unknown>) => Effect.Effect<void>
  /** Sends a signal to the agent and waits for it to exit. */
  readonly kill: (signal: NodeJS.Signals) => Effect.Effect<void>
  /** Sends a signal to the agent and returns at once (SIGSTOP, SIGCONT). */
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
}

/**
 * Starts an agent process, inside `host` (a network namespace) when given, else
 * on this host; it is ended by its PID when the scope closes.
 */
export const startAgent = (host: Host | undefined, config: ClusterConfigInput) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const node = [process.execPath, agentPath, JSON.stringify(config)]
      const child: ChildProcess = host === undefined
        ? spawn(node[0]!, node.slice(1), { stdio: ["pipe", "pipe", "pipe"] })
        : spawn("ip", ["netns", "exec", host.ns, ...node], { stdio: ["pipe", "pipe", "pipe"] })
      let stderr = ""
      child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()))
      const { lines, waitFor } = collectLines<Record<string, any>>([child.stdout!], (line) => {
        try {
          return JSON.parse(line)
        } catch {
          return { raw: line }
        }
      }, () => `agent in ${host?.ns ?? "this host"} (stderr: ${stderr})`)
      let next = 0
      const tell = (cmd: Record<string, unknown>) => {
        const n = ++next
        child.stdin!.write(`${JSON.stringify({ ...cmd, n })}\n`)
        return n
      }
      const command = (cmd: Record<string, unknown>) => {
        const n = tell(cmd)
        return waitFor((l) => l.reply === n)
      }
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
      const kill = (signal: NodeJS.Signals) =>
        Effect.promise(() => {
          child.kill(signal) // our own child, by its PID
          return exited
        })
      return {
        child,
        agent: {
          pid: child.pid!,
          lines,
          waitFor,
          command,
          tell: (cmd) => Effect.sync(() => void tell(cmd)),
          kill,
          signal: (signal) => Effect.sync(() => void child.kill(signal)) // our own child, by its PID
        } satisfies Agent
      }
    }),
    ({ child }) =>
      Effect.callback<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        const kill = setTimeout(() => child.kill("SIGKILL"), 3000)
        child.once("exit", () => {
          clearTimeout(kill)
          resume(Effect.void)
        })
        child.kill("SIGTERM") // our own child, by its PID
      })
  ).pipe(Effect.map(({ agent }) => agent))
