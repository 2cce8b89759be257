/**
 * The Redis source's keys and Lua scripts. Per cluster, under one hash tag
 * (so a Redis Cluster keeps them in one slot), every key a script touches
 * named in its KEYS:
 * - `members`: a sorted set of member instances scored by expiry, on the
 *   server's clock (`TIME`), so members' clocks never matter;
 * - `descriptors`: a hash, instance -> descriptor (sealed when the cluster has a key);
 * - `state`: a hash: `rev`, a counter that moves with every join, update,
 *   leave and loss; `epoch`, set by the first call to an empty Redis (a Redis
 *   restarted empty shows a new one); `kept`, when the keys' lifetime is next
 *   extended;
 * - the `events` channel: `<rev> <join|update|left|lost> <instance> [descriptor]`.
 * One script call per member per heartbeat refreshes it and reaps the
 * expired, each loss published once, atomically, for the whole cluster.
 */
import type * as RedisModule from "effect/persistence/Redis"

export interface RedisKeys {
  readonly members: string
  readonly descriptors: string
  readonly state: string
  readonly channel: string
}

export const redisKeys = (namespace: string, group: string, port: number): RedisKeys => {
  const base = `cluster-comm:{${namespace}/${group}:${port}}`
  return {
    members: `${base}:members`,
    descriptors: `${base}:descriptors`,
    state: `${base}:state`,
    channel: `${base}:events`
  }
}

/** Keys of a cluster nobody beats for this long vanish on their own. */
const ABANDONED_MILLIS = 24 * 3600 * 1000

/**
 * The scripts, made with the `effect/persistence/Redis` module (loaded only
 * when a member uses Redis).
 */
export const makeScripts = (Redis: typeof RedisModule) => ({
  /**
   * The heartbeat: refresh this member (ZADD with expiry now + lease; a member
   * new to the set, such as after Redis restarted empty, is announced as a
   * join), store its descriptor when new or changed, and reap up to 64 expired
   * members. An entry that expired more than its lease ago, or since the last
   * call when none came for `awayMillis` (a ttl), was not reaped in time
   * because no member reached Redis (it was frozen or away): it is kept for
   * `returnMillis` more, time for every live member to reconnect (after its
   * back-off) and beat first. When this beat is late, `sinceMillis`
   * after our last (our process stalled), one that expired since then may
   * belong to a member stalled with us, in the same process, about to beat:
   * it is spared `spareMillis`, once (its score marked with half a
   * millisecond, which its owner's next beat clears), so late callers cannot
   * keep a dead member alive. What an outage grants is marked with a quarter
   * of a millisecond: a beat sent during the outage that Redis runs only
   * after it does not shorten it. Six commands a call in steady state: the
   * cost a member adds to Redis each beat.
   * Returns [rev, server time ms, 1 if this call (re)registered us, epoch].
   */
  heartbeat: Redis.script(
    (keys: RedisKeys, instance: string, leaseMillis: number, descriptor: string, changed: boolean, epoch: string, returnMillis: number, sinceMillis: number, spareMillis: number, awayMillis: number) => [
      keys.members,
      keys.descriptors,
      keys.state,
      instance,
      leaseMillis,
      descriptor,
      changed ? "1" : "0",
      keys.channel,
      ABANDONED_MILLIS,
      epoch,
      returnMillis,
      sinceMillis,
      spareMillis,
      awayMillis
    ],
    {
      numberOfKeys: 3,
      lua: `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local keep = tonumber(ARGV[6])
local back = math.max(lease, tonumber(ARGV[8]) or lease)
local since = tonumber(ARGV[9]) or 0
local spare = tonumber(ARGV[10]) or 0
local state = redis.call('HMGET', KEYS[3], 'rev', 'epoch', 'kept', 'last')
-- No call for longer than a ttl: nobody could reap meanwhile (Redis was
-- frozen or away), so who expired since the last call is not known dead.
local last = tonumber(state[4]) or now
local awayLimit = tonumber(ARGV[11])
local away = awayLimit ~= nil and now - last > awayLimit
redis.call('HSET', KEYS[3], 'last', now)
local rev = tonumber(state[1]) or 0
local epoch = state[2]
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[3], 'epoch', epoch)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 64)
for i = 1, #due, 2 do
  local m = due[i]
  if m ~= ARGV[1] then
    local score = tonumber(due[i + 1])
    local expired = now - score
    if expired > lease or (away and score > last) then
      redis.call('ZADD', KEYS[1], now + back + 0.25, m)
    elseif expired <= since and score % 1 ~= 0.5 then
      redis.call('ZADD', KEYS[1], now + spare + 0.5, m)
    else
      redis.call('ZREM', KEYS[1], m)
      redis.call('HDEL', KEYS[2], m)
      rev = redis.call('HINCRBY', KEYS[3], 'rev', 1)
      redis.call('PUBLISH', ARGV[5], rev .. ' lost ' .. m)
    end
  end
end
local expiry = now + lease
local mine = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if mine and (now - mine > lease or (away and mine <= now)) then
  -- Our own entry long expired: Redis was away (or we were). Beats we sent
  -- meanwhile may come later, with their shorter leases: this one waits too.
  expiry = now + back + 0.25
elseif mine and mine % 1 == 0.25 and mine > expiry then
  -- What an outage granted stands until it ends (a late-coming beat must not shorten it).
  expiry = mine
end
local added = redis.call('ZADD', KEYS[1], expiry, ARGV[1])
if added == 1 or ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  rev = redis.call('HINCRBY', KEYS[3], 'rev', 1)
  local kind = 'update'
  if added == 1 then kind = 'join' end
  redis.call('PUBLISH', ARGV[5], rev .. ' ' .. kind .. ' ' .. ARGV[1] .. ' ' .. ARGV[3])
end
if now > (tonumber(state[3]) or 0) then
  redis.call('HSET', KEYS[3], 'kept', now + keep / 2)
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
end
return { rev, now, added, epoch }
`
    }
  ).withReturnType<readonly [number, number, number, string]>(),

  /** The leave: this member out of the set, at once, with a `left` event (nothing when already gone). */
  leave: Redis.script(
    (keys: RedisKeys, instance: string) => [keys.members, keys.descriptors, keys.state, instance, keys.channel],
    {
      numberOfKeys: 3,
      lua: `
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  local r = redis.call('HINCRBY', KEYS[3], 'rev', 1)
  redis.call('PUBLISH', ARGV[2], r .. ' left ' .. ARGV[1])
end
return 1
`
    }
  ).withReturnType<number>(),

  /**
   * The full read, atomic: [rev, instance, descriptor, instance, descriptor, ...]
   * for every member in the set (expired ones too: the reaper alone removes),
   * the descriptors fetched a thousand at a time.
   */
  read: Redis.script(
    (keys: RedisKeys) => [keys.members, keys.descriptors, keys.state],
    {
      numberOfKeys: 3,
      lua: `
local out = { tonumber(redis.call('HGET', KEYS[3], 'rev')) or 0 }
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for from = 1, #ids, 1000 do
  local chunk = {}
  for i = from, math.min(from + 999, #ids) do chunk[#chunk + 1] = ids[i] end
  local descs = redis.call('HMGET', KEYS[2], unpack(chunk))
  for i = 1, #chunk do
    out[#out + 1] = chunk[i]
    out[#out + 1] = descs[i] or ''
  end
end
return out
`
    }
  ).withReturnType<ReadonlyArray<unknown>>()
})
