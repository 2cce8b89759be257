/**
 * The cluster the build's rehearsals (rehearse.ts, rehearse-effect.ts) join:
 * host-only (loopback, TTL 0), quick beats, and a group and port of its own,
 * so that no other cluster on this host (a test suite's) meets it.
 */
const byte = () => 1 + Math.floor(Math.random() * 254)
const address = `239.${byte()}.${byte()}.${byte()}`
const port = 30000 + Math.floor(Math.random() * 2700) // below the ephemeral ports, above the test suites'

/** A rehearsing member's configuration. */
export const rehearsalConfig = (name: string) => ({ name, address, port, heartbeat: "100 millis", ttl: "1 second" }) as const
