/**
 * The reference: plain node:net with a 4-byte length prefix, the same roles
 * as peer.ts. Sink and echo listen on an ephemeral loopback port.
 */
import net from "node:net"

const [role = "sink", portArg = "0"] = process.argv.slice(2)
type Go = { readonly count: number; readonly size: number; readonly batched?: boolean; readonly warmup?: number }
const nextGo = () => new Promise<Go>((resolve) => process.once("message", (m) => resolve(m as Go)))

/** Calls `frame` with each complete frame in the stream. */
const frames = (socket: net.Socket, frame: (payload: Buffer) => void) => {
  let pending = Buffer.alloc(0)
  socket.on("data", (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    let at = 0
    while (pending.length - at >= 4) {
      const size = pending.readUInt32BE(at)
      if (pending.length - at < 4 + size) break
      frame(pending.subarray(at + 4, at + 4 + size))
      at += 4 + size
    }
    pending = pending.subarray(at)
  })
}

const framed = (size: number) => {
  const buf = Buffer.alloc(4 + size, 97)
  buf.writeUInt32BE(size, 0)
  return buf
}

if (role === "sink" || role === "echo") {
  // Listen for "go" from the start: it may come before the connection is accepted.
  const go = role === "sink" ? nextGo() : undefined
  const server = net.createServer({ noDelay: true }, (socket) => {
    if (role === "echo") frames(socket, (p) => socket.write(framed(p.length)))
    else {
      let seen = 0
      go?.then((go) => {
        frames(socket, () => {
          if (++seen === go.count) process.send?.({ done: true })
        })
        process.send?.({ subscribed: true })
      })
    }
  })
  server.listen(0, "127.0.0.1", () => process.send?.({ ready: true, port: (server.address() as net.AddressInfo).port }))
} else {
  const socket = net.connect({ host: "127.0.0.1", port: Number(portArg), noDelay: true })
  socket.on("connect", async () => {
    process.send?.({ ready: true })
    const go = await nextGo()
    const frame = framed(go.size)
    if (role === "source") {
      // One write a frame, or (batched) 64 frames a write.
      const per = go.batched ? 64 : 1
      const chunk = per === 1 ? frame : Buffer.concat(Array.from({ length: per }, () => frame))
      for (let i = 0; i < go.count; i += per) {
        if (!socket.write(chunk)) await new Promise((r) => socket.once("drain", r))
      }
      process.send?.({ sent: true })
    } else {
      const times: Array<number> = []
      const cold: Array<number> = []
      let resolveOne: () => void = () => {}
      frames(socket, () => resolveOne())
      // As in peer.ts: `warmup` trips first, untimed.
      const warmup = go.warmup ?? 0
      for (let i = 0; i < warmup + go.count; i++) {
        const t = performance.now()
        await new Promise<void>((r) => {
          resolveOne = r
          socket.write(frame)
        })
        if (i >= warmup) times.push(performance.now() - t)
        else if (i < 1000) cold.push(performance.now() - t)
      }
      process.send?.({ times, cold })
    }
  })
}
process.on("SIGTERM", () => process.exit(0))
