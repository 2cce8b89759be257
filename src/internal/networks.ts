/**
 * The `allow` list: IPv4 and IPv6 networks (CIDR) on Effect's `effect/net`,
 * and the check of a frame's source address against them.
 */
import * as IpNetwork from "effect/net/IpNetwork"
import * as NetAddress from "effect/net/NetAddress"
import { plainAddress } from "./host.ts"
import { boundedMemo } from "./memo.ts"

/**
 * A network such as `10.1.0.0/16` or `fd00::/8`, or why it is not one. Host
 * bits are masked (`10.1.2.3/16` is `10.1.0.0/16`), as routers and firewalls read it.
 */
export const parseNetwork = (cidr: string): IpNetwork.IpNetwork | string => {
  const exact = IpNetwork.fromString(cidr)
  if (exact._tag === "Success") return exact.success
  const [address, prefix, ...rest] = cidr.split("/")
  const ip = address === undefined || rest.length > 0 ? undefined : NetAddress.ipFromString(address)
  if (ip?._tag === "Success" && prefix !== undefined && /^\d{1,3}$/.test(prefix)) {
    const masked = IpNetwork.fromAddress(ip.success, Number(prefix))
    if (masked._tag === "Success") return masked.success
    return masked.failure.message
  }
  return exact.failure.message
}

/** Addresses looked up at most: a frame's source address comes from the network. */
const MAX_CACHED = 4096

/**
 * Whether an address lies in one of the networks; undefined for an empty list
 * (every address is allowed). IPv4 peers on a dual-stack socket
 * (`::ffff:1.2.3.4`) are matched as IPv4. Answers are kept per address: the
 * check runs for every frame from another host.
 */
export const allowList = (networks: ReadonlyArray<string>): ((address: string) => boolean) | undefined => {
  if (networks.length === 0) return undefined
  const parsed = networks.map(parseNetwork).filter((n) => typeof n !== "string")
  return boundedMemo(MAX_CACHED, (address: string) => {
    const ip = NetAddress.ipFromString(plainAddress(address))
    return ip._tag === "Success" && parsed.some((n) => IpNetwork.contains(n, ip.success))
  })
}
