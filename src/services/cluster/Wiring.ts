/**
 * What the Cluster facade hands each of its pipelines: the member's services,
 * who it is, and a way to start fibers the member owns from plain code.
 */
import type * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type { Sender } from "../../schema/Frame.ts"
import type { Discovery } from "../Discovery.ts"
import type { Hooks } from "../Hooks.ts"
import type { Registry } from "../Registry.ts"
import type { Stats } from "../Stats.ts"
import type { Telemetry } from "../Telemetry.ts"
import type { Transport } from "../Transport.ts"

export interface Wiring {
  readonly transport: Transport["Service"]
  readonly registry: Registry["Service"]
  readonly discovery: Discovery["Service"]
  readonly hooks: Hooks["Service"]
  readonly stats: Stats["Service"]
  readonly telemetry: Telemetry["Service"]
  /** This member on the wire. */
  readonly sender: Sender
  /** This member's service id (`hostId@name`): datagram filters name it. */
  readonly selfId: string
  /**
   * Runs an effect in a fiber the member owns (with its services, its clock
   * among them): for what starts in plain code, on a socket's callback or
   * after a query's first sends.
   */
  readonly runNow: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>
  /** Whether the member's spans go anywhere (a tracer is installed). */
  readonly tracing: boolean
  /**
   * A point's hooks as this member runs them on the message path: in spans
   * when it makes them, else ending at once while they hand back finished
   * values (`Hooks.runNow`).
   */
  readonly runHooks: Hooks["Service"]["runNow"]
}
