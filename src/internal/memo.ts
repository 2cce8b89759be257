/**
 * `make(key)` once a key, kept in a Map of at most `max` entries; full, it
 * starts afresh. For keys that come from the network (ops, addresses,
 * descriptors): bounded, and no closure a call.
 */
export const boundedMemo = <K, V>(max: number, make: (key: K) => V): ((key: K) => V) => {
  const made = new Map<K, V>()
  return (key) => {
    let value = made.get(key)
    if (value === undefined) {
      if (made.size >= max) made.clear()
      value = make(key)
      made.set(key, value)
    }
    return value
  }
}
