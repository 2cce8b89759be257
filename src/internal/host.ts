/**
 * What this host is: its id (first non-loopback MAC, else a stable machine id),
 * its own addresses, and the interface used for multicast.
 */
import { fs, nodeCrypto, os } from "./builtins.ts"

const { closeSync, openSync, readFileSync, readSync } = fs
const { hostname, networkInterfaces } = os

const ZERO_MAC = "00:00:00:00:00:00"

/** 12 hex digits naming this host: the first non-loopback MAC, else a hash of the machine id (or the host name). */
export const detectHostId = (): string => {
  for (const [, addrs] of Object.entries(networkInterfaces())) {
    const mac = addrs?.find((a) => !a.internal && a.mac !== ZERO_MAC)?.mac
    if (mac !== undefined) return mac.replaceAll(":", "")
  }
  let seed = hostname()
  for (const file of ["/etc/machine-id", "/var/lib/dbus/machine-id"]) {
    try {
      seed = readFileSync(file, "utf8").trim() || seed
      break
    } catch {
      // try the next source
    }
  }
  return fnv1a48(seed)
}

/**
 * 48 bits of FNV-1a over the machine id: a stable name that does not show the
 * id itself (systemd asks that it not be), without loading node:crypto (3-4 ms
 * of a start) on a host with no MAC, such as a container with loopback alone.
 */
const fnv1a48 = (text: string): string => {
  let hash = 0xcbf29ce484222325n
  for (const byte of Buffer.from(text)) hash = BigInt.asUintN(64, (hash ^ BigInt(byte)) * 0x100000001b3n)
  return (hash >> 16n).toString(16).padStart(12, "0")
}

/**
 * A random 64-bit instance id (16 hex digits): a restart gets a new one. Read
 * from the kernel's random source where there is one (0.1 ms, against loading
 * node:crypto); elsewhere from node:crypto.
 */
export const newInstance = (): string => {
  const bytes = Buffer.alloc(8)
  try {
    const fd = openSync("/dev/urandom", "r")
    try {
      if (readSync(fd, bytes, 0, 8, null) === 8) return bytes.toString("hex")
    } finally {
      closeSync(fd)
    }
  } catch {
    // no /dev/urandom (Windows): node:crypto below
  }
  return nodeCrypto().randomBytes(8).toString("hex")
}

let localAddresses = new Set<string>()
let refreshedAt = 0

const refresh = () => {
  const next = new Set<string>()
  for (const addrs of Object.values(networkInterfaces())) for (const a of addrs ?? []) next.add(a.address)
  localAddresses = next
  refreshedAt = Date.now()
}

/** Whether an address belongs to this host (loopback, or one of its interfaces). */
export const isLocalAddress = (address: string): boolean => {
  if (address.startsWith("127.") || address === "::1" || address.startsWith("::ffff:127.")) return true
  if (localAddresses.has(address)) return true
  // Interfaces come and go; look again, but at most once a second.
  if (Date.now() - refreshedAt > 1000) {
    refresh()
    return localAddresses.has(address)
  }
  return false
}

/** The IPv4 address of the interface named (by name or address), or the first non-loopback one. */
export const interfaceAddress = (wanted: string | undefined): string | undefined => {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.family !== "IPv4") continue
      if (wanted === undefined ? !a.internal : wanted === name || wanted === a.address) return a.address
    }
  }
  return undefined
}

/** `::ffff:1.2.3.4` (an IPv4 peer on a dual-stack socket) as `1.2.3.4`. */
export const plainAddress = (address: string | undefined): string =>
  address === undefined ? "" : address.startsWith("::ffff:") ? address.slice(7) : address
