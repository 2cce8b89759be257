/**
 * A real redis-server for the tests, started on a free port (on loopback, or
 * inside a network namespace on its address) and ended by its PID with the
 * scope. `freeze`/`thaw` stop and continue it (SIGSTOP/SIGCONT); `restart`
 * kills it and starts an empty one on the same port.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
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
  /** Serve TLS only (a `rediss://` URL), with this certificate and key. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string }
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
          ...(options.tls === undefined
            ? ["--port", String(port)]
            : ["--port", "0", "--tls-port", String(port), "--tls-cert-file", options.tls.cert, "--tls-key-file", options.tls.key,
              "--tls-ca-cert-file", options.tls.ca, "--tls-auth-clients", "no"]),
          "--bind", bind, "--save", "", "--appendonly", "no",
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
        url: `${options.tls === undefined ? "redis" : "rediss"}://${auth}${bind}:${port}`,
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
            const tls = options.tls === undefined ? [] : ["--tls", "--cacert", options.tls.ca]
            const [command, argv] = inNs(options.host, "redis-cli", ["-h", bind, "-p", String(port), ...tls, ...(options.cliArgs ?? []), ...args])
            return execFileSync(command, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
          })
      }
      return { server, stop: stop("SIGKILL"), dir }
    }),
    ({ stop, dir }) => Effect.andThen(stop, Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  ).pipe(Effect.map(({ server }) => server))

/** A CA and a certificate for 127.0.0.1 signed by it, made with openssl in a temporary directory. */
export const testCertificates = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = mkdtempSync(join(tmpdir(), "cc-tls-"))
    const at = (f: string) => join(dir, f)
    const openssl = (...args: ReadonlyArray<string>) => execFileSync("openssl", args, { stdio: "ignore" })
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cluster-comm test CA", "-keyout", at("ca.key"), "-out", at("ca.crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", at("redis.key"), "-out", at("redis.csr"))
    writeFileSync(at("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", at("redis.csr"), "-CA", at("ca.crt"), "-CAkey", at("ca.key"), "-CAcreateserial", "-days", "1", "-extfile", at("ext.cnf"), "-out", at("redis.crt"))
    return { dir, cert: at("redis.crt"), key: at("redis.key"), ca: at("ca.crt") }
  }),
  ({ dir }) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)
