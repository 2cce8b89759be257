/**
 * Node's built-in modules, taken with getBuiltinModule rather than imported:
 * an ESM import of a built-in builds a facade that runs every lazy getter
 * (fs.promises pulls in streams and readline), and all of a bundle's imports
 * run at its load, used or not. Those a member needs at its start are taken
 * here; dns and crypto only when first used (the seeds source resolving, a
 * keyring, an instance id where there is no /dev/urandom): loading crypto
 * costs milliseconds of a start.
 */
export const net = process.getBuiltinModule("node:net")
export const dgram = process.getBuiltinModule("node:dgram")
export const os = process.getBuiltinModule("node:os")
export const path = process.getBuiltinModule("node:path")
export const fs = process.getBuiltinModule("node:fs")
export const events = process.getBuiltinModule("node:events")
export const dnsPromises = () => process.getBuiltinModule("node:dns/promises")
export const nodeCrypto = () => process.getBuiltinModule("node:crypto")
