/** What a bench host process reports of itself when sampled: CPU time and memory. */

/** Starts a sample: the CPU and time before the sample's own work (a GC, reading the members). */
export const sampleStart = () => {
  const cpu = process.cpuUsage()
  const at = performance.now()
  ;(globalThis as { gc?: () => void }).gc?.()
  return { cpu, at }
}

/** The sample's fields once the members are read: the window runs from the end of one sample to the start of the next. */
export const sampleFields = (start: ReturnType<typeof sampleStart>) => {
  const memory = process.memoryUsage()
  return {
    sampled: true,
    at: start.at,
    cpu: start.cpu,
    cpuAfter: process.cpuUsage(),
    atAfter: performance.now(),
    heapUsed: memory.heapUsed,
    external: memory.external + memory.arrayBuffers,
    rss: memory.rss
  }
}
