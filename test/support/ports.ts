/** Free ports on loopback, for servers and members the tests start on fixed ports. */
import { createSocket } from "node:dgram"
import { createServer } from "node:net"
import { Effect } from "effect"

export const freeTcpPort = Effect.callback<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as { port: number }
    server.close(() => resume(Effect.succeed(port)))
  })
})

export const freeUdpPort = Effect.callback<number>((resume) => {
  const s = createSocket("udp4")
  s.bind(0, "127.0.0.1", () => {
    const port = s.address().port
    s.close(() => resume(Effect.succeed(port)))
  })
})
