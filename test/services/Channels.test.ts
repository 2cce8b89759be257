import { randomBytes } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, } from "effect"
import { TestClock } from "effect/testing"
import { Cluster, HookPoint, MemoryNetwork } from "cluster-comm"
import { sealChannel } from "../../examples/encrypted-channel/seal.ts"
import { collect, memberOn } from "../helpers.ts"

describe("channels", () => {
  it.effect("every member is on 0, 1 and 2 and cannot leave them; others come and go", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const m = yield* memberOn(network, { name: "m", channels: [9] })
      assert.deepStrictEqual(yield* m.channels.list, [0, 1, 2, 9])
      yield* m.channels.join(12)
      yield* m.channels.leave(9)
      assert.deepStrictEqual(yield* m.channels.list, [0, 1, 2, 12])
      for (const fixed of [0, 1, 2]) {
        const error = yield* Effect.flip(m.channels.leave(fixed))
        assert.strictEqual(error._tag, "ChannelError")
      }
      assert.strictEqual((yield* Effect.flip(m.channels.join(70000)))._tag, "ChannelError")
      assert.deepStrictEqual(yield* m.channels.list, [0, 1, 2, 12])
    }))

  it.effect("frames on a channel a member is not on are dropped before any hook", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const on = yield* memberOn(network, { name: "on", channels: [5] })
      const off = yield* memberOn(network, "off")
      const sender = yield* memberOn(network, "sender")
      yield* TestClock.adjust("10 millis")
      let hooked = 0
      const count = <A>(value: A) =>
        Effect.sync(() => {
          hooked++
          return value
        })
      yield* off.hook(HookPoint.service("eval"), count)
      yield* off.hook(HookPoint.receive, count)
      const atOn = yield* collect(on, 2)
      const atOff = yield* collect(off, 1)
      yield* sender.broadcast("C", "on five", { channel: 5 })
      yield* sender.sendTo("off", "C", "direct on five", { channel: 5 }) // direct, still dropped
      yield* sender.sendTo("on", "C", "direct on five", { channel: 5 })
      yield* sender.broadcast("C", "on zero")
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(atOn)).map((m) => `${m.text}/${m.channel}`), ["on five/5", "direct on five/5"])
      assert.deepStrictEqual((yield* Fiber.join(atOff)).map((m) => m.text), ["on zero"])
      assert.strictEqual((yield* off.stats).drops.channel, 2)
      assert.strictEqual(hooked, 2) // eval and receive, for "on zero" only
    }))

  it.effect("channel 1 (system) is accepted from this host only", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const local = yield* memberOn(network, { name: "local", remote: 1 })
      const far = yield* memberOn(network, { name: "far", hostId: "0000000000f1", remote: 1 }, "198.51.100.20")
      const near = yield* memberOn(network, { name: "near", remote: 1 })
      yield* TestClock.adjust("10 millis")
      const got = yield* collect(local, 2)
      yield* far.broadcast("S", "from far", { channel: 1 })
      yield* far.broadcast("S", "lan from far", { channel: 2 })
      yield* near.broadcast("S", "from near", { channel: 1 })
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(got)).map((m) => m.text), ["lan from far", "from near"])
      assert.strictEqual((yield* local.stats).drops["non-local"], 1)
    }))

  it.effect("channel hooks run after op and before protocol on send, after protocol and before receive on receive", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const rx = yield* memberOn(network, { name: "rx", channels: [4] })
      const tx = yield* memberOn(network, "tx")
      yield* TestClock.adjust("10 millis")
      const order: Array<string> = []
      const mark = (label: string) => <A>(value: A) =>
        Effect.sync(() => {
          order.push(label)
          return value
        })
      yield* tx.hook(HookPoint.op("C", "send"), mark("op send"))
      yield* tx.hook(HookPoint.channel(4, "send"), mark("channel send"))
      yield* tx.hook(HookPoint.protocol("tcp", "send"), mark("protocol send"))
      yield* rx.hook(HookPoint.protocol("tcp", "receive"), mark("protocol receive"))
      yield* rx.hook(HookPoint.channel(4, "receive"), mark("channel receive"))
      yield* rx.hook(HookPoint.receive, mark("receive"))
      yield* rx.hook(HookPoint.channel(5, "receive"), mark("wrong channel"))
      const got = yield* collect(rx, 1)
      yield* tx.sendTo("rx", "C", "x", { channel: 4 })
      yield* TestClock.adjust("10 millis")
      yield* Fiber.join(got)
      assert.deepStrictEqual(order, ["op send", "channel send", "protocol send", "protocol receive", "channel receive", "receive"])
    }))

  it.effect("the encrypted-channel example: key holders read the channel, others see only sealed bytes", () =>
    Effect.gen(function*() {
      const network = MemoryNetwork.make()
      const key = randomBytes(32)
      const alice = yield* memberOn(network, "alice")
      const bob = yield* memberOn(network, "bob")
      const eve = yield* memberOn(network, { name: "eve", channels: [7] }) // on the channel, no key
      const mallory = yield* memberOn(network, "mallory") // a wrong key
      yield* sealChannel(7, key).pipe(Effect.provideService(Cluster, alice))
      yield* sealChannel(7, key).pipe(Effect.provideService(Cluster, bob))
      yield* sealChannel(7, randomBytes(32)).pipe(Effect.provideService(Cluster, mallory))
      yield* TestClock.adjust("10 millis")
      const atBob = yield* collect(bob, 2)
      const atEve = yield* collect(eve, 2)
      yield* alice.broadcast("S", "the plan", { channel: 7 })
      yield* alice.sendTo("bob", "S", "for bob", { channel: 7 })
      yield* alice.sendTo("eve", "S", "for eve", { channel: 7 })
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual((yield* Fiber.join(atBob)).map((m) => m.text), ["the plan", "for bob"])
      const sealed = yield* Fiber.join(atEve)
      assert.strictEqual(sealed.length, 2)
      for (const m of sealed) {
        assert.notInclude(m.text, "plan")
        assert.notInclude(m.text, "for eve")
        assert.isAtLeast(m.data.length, 12 + 16) // iv and tag travel with it
      }
      // Mallory's hook cannot open it: rejected, counted, never delivered.
      assert.strictEqual((yield* mallory.stats).drops["hook-rejected"], 1)
    }))
})
