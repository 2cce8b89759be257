/**
 * A real redis-server for the tests, started on a free port (on loopback, or
 * inside a network namespace on its address) and ended by its PID with the
 * scope. `freeze`/`thaw` stop and continue it (SIGSTOP/SIGCONT); `restart`
 * kills it and starts an empty one on the same port.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { type Host, hasCommand } from "./hosts.ts"
import { freeTcpPort } from "./ports.ts"

export const canRunRedis = (): boolean => hasCommand("redis-server")


export interface RedisServer {
  readonly url: string
  readonly host: string
  readonly port: number
  readonly pid: () => number
  readonly freeze: Effect.Effect<void>
  readonly thaw: Effect.Effect<void>
  /** Kills it (SIGKILL) and starts an empty one on the same port. */
  readonly restart: Effect.Effect<void, Error>
  /** Kills it (SIGKILL): Redis gone. */
  readonly kill: Effect.Effect<void>
  /** Starts it again after `kill` (empty). */
  readonly start: Effect.Effect<void, Error>
  /** Runs redis-cli against it; returns its output. */
  readonly cli: (...args: ReadonlyArray<string>) => Effect.Effect<string>
}

export interface RedisOptions {
  /** The namespace to run it in, listening on the host's address. */
  readonly host?: Host
  /** Extra redis-server arguments (ACL users, TLS). */
  readonly args?: ReadonlyArray<string>
  /** Arguments redis-cli needs (a user and password). */
  readonly cliArgs?: ReadonlyArray<string>
  /** The user and password the URL carries. */
  readonly auth?: string
}

const inNs = (host: Host | undefined, command: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  host === undefined ? [command, [...args]] : ["ip", ["netns", "exec", host.ns, command, ...args]]

export const startRedis = (options: RedisOptions = {}) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const port = yield* freeTcpPort
      const bind = options.host?.address ?? "127.0.0.1"
      const dir = mkdtempSync(join(tmpdir(), "cc-redis-"))
      let child: ChildProcess | undefined
      const launch = Effect.callback<void, Error>((resume) => {
        const [command, args] = inNs(options.host, "redis-server", [
          "--port", String(port), "--bind", bind, "--save", "", "--appendonly", "no",
          "--protected-mode", "no", "--dir", dir, "--loglevel", "notice", ...(options.args ?? [])
        ])
        const c = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] })
        child = c
        let out = ""
        const timer = setTimeout(() => resume(Effect.fail(new Error(`redis-server did not start: ${out}`))), 10_000)
        const onData = (chunk: Buffer) => {
          out += chunk.toString()
          if (out.includes("Ready to accept connections")) {
            clearTimeout(timer)
            c.stdout!.off("data", onData)
            c.stdout!.resume()
            resume(Effect.void)
          }
        }
        c.stdout!.on("data", onData)
        c.stderr!.on("data", (chunk: Buffer) => (out += chunk.toString()))
        c.once("exit", (code) => {
          clearTimeout(timer)
          if (!out.includes("Ready to accept connections")) resume(Effect.fail(new Error(`redis-server exited (${code}): ${out}`)))
        })
      })
      const stop = (signal: NodeJS.Signals) =>
        Effect.callback<void>((resume) => {
          const c = child
          if (c === undefined || c.exitCode !== null || c.signalCode !== null) return resume(Effect.void)
          c.once("exit", () => resume(Effect.void))
          c.kill(signal) // our own child, by its PID
        })
      yield* launch
      const auth = options.auth === undefined ? "" : `${options.auth}@`
      const server: RedisServer = {
        url: `redis://${auth}${bind}:${port}`,
        host: bind,
        port,
        pid: () => child?.pid ?? 0,
        freeze: Effect.sync(() => void child?.kill("SIGSTOP")),
        thaw: Effect.sync(() => void child?.kill("SIGCONT")),
        kill: stop("SIGKILL"),
        start: launch,
        restart: Effect.andThen(stop("SIGKILL"), launch),
        cli: (...args) =>
          Effect.sync(() => {
            const [command, argv] = inNs(options.host, "redis-cli", ["-h", bind, "-p", String(port), ...(options.cliArgs ?? []), ...args])
            return execFileSync(command, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
          })
      }
      return { server, stop: stop("SIGKILL"), dir }
    }),
    ({ stop, dir }) => Effect.andThen(stop, Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  ).pipe(Effect.map(({ server }) => server))
