/**
 * Subnets joined by a router: each subnet a bridge in a namespace of its own
 * with hosts on it, and a router namespace with a leg on every subnet that
 * forwards unicast (ip_forward) and no multicast (Linux forwards multicast
 * only with a multicast routing daemon, and none runs). All created by the
 * test and removed with its scope, /etc/netns files included.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import { Effect } from "effect"
import { type Host, ip, removeStale } from "./hosts.ts"

let nets = 0

export interface RoutedNet {
  /** Hosts by subnet: `subnets[i][j]` is host j+1 of subnet i, at 10.232.<s+i>.<j+1>. */
  readonly subnets: ReadonlyArray<ReadonlyArray<Host>>
  readonly router: string
}

/**
 * Subnets of `sizes[i]` hosts each. `hosts` maps names to addresses in every
 * host's /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts), and each
 * host's resolver points at its own loopback, so no name query leaves it.
 */
export const makeRoutedNet = (sizes: ReadonlyArray<number>, names: (net: RoutedNet) => Record<string, string> = () => ({})) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      removeStale()
      const id = `cc-${process.pid}-r${nets++}`
      const base = 20 + ((process.pid * 7 + nets * 3) % 200)
      const router = `${id}-rt`
      const namespaces: Array<string> = [router]
      ip("netns", "add", router)
      ip("-n", router, "link", "set", "lo", "up")
      ip("netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
      const subnets = sizes.map((size, i) => {
        const subnet = `10.232.${base + i}`
        const bridge = `${id}-b${i}`
        namespaces.push(bridge)
        ip("netns", "add", bridge)
        ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", bridge, "link", "set", "br0", "up")
        // The router's leg on this subnet.
        ip("link", "add", `r${i}`, "netns", router, "type", "veth", "peer", "name", "rt", "netns", bridge)
        ip("-n", bridge, "link", "set", "rt", "master", "br0", "up")
        ip("-n", router, "addr", "add", `${subnet}.254/24`, "dev", `r${i}`)
        ip("-n", router, "link", "set", `r${i}`, "up")
        return Array.from({ length: size }, (_, j): Host => {
          const ns = `${id}-s${i}h${j + 1}`
          const address = `${subnet}.${j + 1}`
          namespaces.push(ns)
          ip("netns", "add", ns)
          ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", `p${j + 1}`, "netns", bridge)
          ip("-n", bridge, "link", "set", `p${j + 1}`, "master", "br0", "up")
          ip("-n", ns, "addr", "add", `${address}/24`, "dev", "eth0")
          ip("-n", ns, "link", "set", "eth0", "up")
          ip("-n", ns, "link", "set", "lo", "up")
          ip("-n", ns, "route", "add", "default", "via", `${subnet}.254`)
          return { ns, address, iface: "eth0" }
        })
      })
      const net: RoutedNet = { subnets, router }
      const extra = Object.entries(names(net)).map(([name, address]) => `${address} ${name}`)
      for (const host of subnets.flat()) {
        mkdirSync(`/etc/netns/${host.ns}`, { recursive: true })
        writeFileSync(`/etc/netns/${host.ns}/hosts`, ["127.0.0.1 localhost", ...extra, ""].join("\n"))
        writeFileSync(`/etc/netns/${host.ns}/resolv.conf`, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
      }
      return { net, namespaces }
    }),
    ({ net, namespaces }) =>
      Effect.sync(() => {
        for (const host of net.subnets.flat()) rmSync(`/etc/netns/${host.ns}`, { recursive: true, force: true })
        for (const ns of namespaces) ip("netns", "del", ns)
      })
  ).pipe(Effect.map(({ net }) => net))
