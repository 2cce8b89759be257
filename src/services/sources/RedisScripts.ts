/**
 * The Redis source's keys and Lua scripts. Per cluster, under one hash tag
 * (so a Redis Cluster keeps them in one slot):
 * - `members`: a sorted set of member instances scored by expiry, on the
 *   server's clock (`TIME`), so members' clocks never matter;
 * - `d:<instance>`: each member's descriptor (sealed when the cluster has a key);
 * - `rev`: a counter that moves with every join, update, leave and loss;
 * - `clock`: when a script last ran, to tell a frozen Redis from dead members;
 * - the `events` channel: `<rev> <join|update|left|lost> <instance> [descriptor]`.
 * One script call per member per heartbeat refreshes it and reaps the
 * expired, each loss published once, atomically, for the whole cluster.
 */
import type * as RedisModule from "effect/persistence/Redis"

export interface RedisKeys {
  readonly members: string
  readonly rev: string
  readonly clock: string
  readonly descriptorPrefix: string
  readonly channel: string
}

export const redisKeys = (namespace: string, group: string, port: number): RedisKeys => {
  const base = `cluster-comm:{${namespace}/${group}:${port}}`
  return {
    members: `${base}:members`,
    rev: `${base}:rev`,
    clock: `${base}:clock`,
    descriptorPrefix: `${base}:d:`,
    channel: `${base}:events`
  }
}

/** Keys of a cluster nobody beats for this long vanish on their own. */
const ABANDONED_MILLIS = 24 * 3600 * 1000

/**
 * The scripts, made with the `effect/persistence/Redis` module (loaded only
 * when a member uses Redis).
 *
 * The heartbeat: refresh this member (ZADD with expiry now + ttl; a member new
 * to the set, such as after Redis restarted empty, is announced as a join),
 * store its descriptor, and reap up to 64 expired members. After a gap in
 * which no member reached Redis (it was frozen or away), reaping waits one
 * ttl so every live member can beat again before anyone is declared lost.
 * Returns [rev, server time ms, 1 if this call (re)registered us, epoch]:
 * the epoch is set by the first call to an empty Redis, so a Redis that
 * restarted empty shows a new one.
 */
export const makeScripts = (Redis: typeof RedisModule) => ({
  heartbeat: Redis.script(
  (keys: RedisKeys, instance: string, ttlMillis: number, descriptor: string, changed: boolean, epoch: string) => [
    keys.members,
    keys.rev,
    keys.clock,
    `${keys.descriptorPrefix}${instance}`,
    instance,
    ttlMillis,
    descriptor,
    changed ? "1" : "0",
    keys.descriptorPrefix,
    keys.channel,
    ABANDONED_MILLIS,
    epoch
  ],
  {
    numberOfKeys: 4,
    lua: `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[7])
local clock = redis.call('HMGET', KEYS[3], 'last', 'grace')
local last = tonumber(clock[1])
local grace = tonumber(clock[2]) or 0
if last == nil or now - last > ttl * 0.75 then
  grace = now + ttl
end
redis.call('HSET', KEYS[3], 'last', now, 'grace', grace)
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[8])
redis.call('PEXPIRE', KEYS[3], keep)
if now > grace then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)
  for _, m in ipairs(dead) do
    if m ~= ARGV[1] then
      redis.call('ZREM', KEYS[1], m)
      redis.call('DEL', ARGV[5] .. m)
      local r = redis.call('INCR', KEYS[2])
      redis.call('PUBLISH', ARGV[6], r .. ' lost ' .. m)
    end
  end
end
local added = redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ttl * 4)
redis.call('PEXPIRE', KEYS[1], keep)
local rev
if added == 1 or ARGV[4] == '1' then
  rev = redis.call('INCR', KEYS[2])
  local kind = 'update'
  if added == 1 then kind = 'join' end
  redis.call('PUBLISH', ARGV[6], rev .. ' ' .. kind .. ' ' .. ARGV[1] .. ' ' .. ARGV[3])
else
  rev = tonumber(redis.call('GET', KEYS[2]) or '0')
end
redis.call('PEXPIRE', KEYS[2], keep)
return { rev, now, added, redis.call('HGET', KEYS[3], 'epoch') }
`
  }
  ).withReturnType<readonly [number, number, number, string]>(),

  /** The leave: this member out of the set, at once, with a `left` event (nothing when already gone). */
  leave: Redis.script(
  (keys: RedisKeys, instance: string) => [keys.members, keys.rev, `${keys.descriptorPrefix}${instance}`, instance, keys.channel],
  {
    numberOfKeys: 3,
    lua: `
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[3])
  local r = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[2], r .. ' left ' .. ARGV[1])
end
return 1
`
  }
  ).withReturnType<number>(),

  /**
   * The full read, atomic: [rev, instance, descriptor, instance, descriptor, ...]
   * for every member in the set (expired ones too: the reaper alone removes).
   */
  read: Redis.script(
  (keys: RedisKeys) => [keys.members, keys.rev, keys.descriptorPrefix],
  {
    numberOfKeys: 2,
    lua: `
local out = { tonumber(redis.call('GET', KEYS[2]) or '0') }
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('GET', ARGV[1] .. m) or ''
end
return out
`
  }
).withReturnType<ReadonlyArray<unknown>>()
})
