/**
 * The tcp protocol: a stream protocol (see Stream.ts) on a tcp port, bound to
 * loopback for a host-only member. A rebuilt listener takes a new free port.
 */
import type net from "node:net"
import * as Effect from "effect/Effect"
import { plainAddress } from "../../internal/host.ts"
import { JoinError } from "../../schema/Errors.ts"
import type { ProtocolPlugin } from "../Protocol.ts"
import { makeStreamProtocol, streamLimits } from "./Stream.ts"

export const TcpProtocol: ProtocolPlugin = {
  name: "tcp",
  id: 1,
  make: ({ config, inlet, stats }) => {
    const host = config.hostOnly ? "127.0.0.1" : "0.0.0.0"
    let wanted = config.tcpPort
    return makeStreamProtocol({
      name: "tcp",
      maxFrame: config.maxFrame,
      inlet,
      stats,
      limits: streamLimits(config),
      listen: (server) =>
        Effect.callback<number, JoinError>((resume) => {
          const onError = (e: NodeJS.ErrnoException) =>
            resume(Effect.fail(new JoinError({
              reason: "AddressInUse",
              field: "tcpPort",
              message: `cannot listen on tcp port ${wanted}: ${e.message}`,
              cause: e
            })))
          server.once("error", onError)
          server.listen(wanted, host, () => {
            server.off("error", onError)
            // A rebuilt listener takes any free port: the old one may be stuck.
            wanted = 0
            resume(Effect.succeed((server.address() as net.AddressInfo).port))
          })
        }),
      connectTo: (to) => ({ host: to.address, port: to.port }),
      keyOf: (to) => `${to.address}:${to.port}`,
      addressOf: (socket) => plainAddress(socket.remoteAddress),
      selfEndpoint: (port) => ({ host: "127.0.0.1", port })
    })
  }
}
