/**
 * The bench's figures as an SVG chart, drawn from its JSON: discovery (N
 * processes started at once, next to N bare node processes) and the scale
 * curve (time to converge and CPU a member a heartbeat, by members).
 * `node bench/chart.ts [results.json] [out.svg]` redraws one from a saved run.
 */
import { readFileSync, writeFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

type Results = Record<string, any>

const W = 920
const H = 360
const PANEL = { w: 360, h: 230, top: 70 }
const COLORS = { cluster: "#2f6fb0", bare: "#b9c4cf", cpu: "#d0742c" }

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;")
const text = (x: number, y: number, s: string, extra = "") =>
  `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${extra}>${esc(s)}</text>`
/** A round upper bound for an axis: 1, 2 or 5 times a power of ten. */
const ceiling = (v: number) => {
  const p = 10 ** Math.floor(Math.log10(Math.max(v, 1e-9)))
  return [1, 2, 5, 10].map((k) => k * p).find((c) => c >= v)!
}
const fmtMs = (ms: number) => ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)} s` : `${Math.round(ms)} ms`

/** Grouped bars: all know all against bare node starts, per N. */
const discoveryPanel = (results: Results, x0: number): string => {
  const rows = Object.keys(results)
    .filter((k) => /^discovery_\d+$/.test(k))
    .map((k) => ({ n: Number(k.slice(10)), cluster: results[k].allKnownMs as number, bare: results[k].bareStartsMs as number }))
    .sort((a, b) => a.n - b.n)
  const out = [text(x0, PANEL.top - 30, "Discovery: N processes started at once", `font-weight="bold"`)]
  if (rows.length === 0) return out.concat(text(x0, PANEL.top + 20, "(not measured in this run)")).join("\n")
  const max = ceiling(Math.max(...rows.flatMap((r) => [r.cluster, r.bare])))
  const y = (v: number) => PANEL.top + PANEL.h - (v / max) * PANEL.h
  const group = PANEL.w / rows.length
  out.push(`<line x1="${x0}" y1="${y(0)}" x2="${x0 + PANEL.w}" y2="${y(0)}" stroke="#555"/>`)
  for (const tick of [0, max / 2, max]) out.push(text(x0 - 6, y(tick) + 4, fmtMs(tick), `text-anchor="end" font-size="11"`))
  rows.forEach((r, i) => {
    const gx = x0 + i * group + group * 0.2
    const bw = group * 0.28
    for (const [j, v, color] of [[0, r.cluster, COLORS.cluster], [1, r.bare, COLORS.bare]] as const) {
      const bx = gx + j * bw
      out.push(`<rect x="${bx.toFixed(1)}" y="${y(v).toFixed(1)}" width="${bw.toFixed(1)}" height="${(y(0) - y(v)).toFixed(1)}" fill="${color}"/>`)
      out.push(text(bx + bw / 2, y(v) - 4, fmtMs(v), `text-anchor="middle" font-size="10"`))
    }
    out.push(text(gx + bw, y(0) + 16, `N = ${r.n}`, `text-anchor="middle" font-size="12"`))
  })
  out.push(`<rect x="${x0}" y="${PANEL.top + PANEL.h + 28}" width="10" height="10" fill="${COLORS.cluster}"/>`)
  out.push(text(x0 + 14, PANEL.top + PANEL.h + 37, "cluster-comm: all know all", `font-size="11"`))
  out.push(`<rect x="${x0 + 190}" y="${PANEL.top + PANEL.h + 28}" width="10" height="10" fill="${COLORS.bare}"/>`)
  out.push(text(x0 + 204, PANEL.top + PANEL.h + 37, "N bare node processes up", `font-size="11"`))
  return out.join("\n")
}

/** Two lines on one x axis (members): convergence time (left axis) and CPU a member a heartbeat (right axis). */
const scalePanel = (results: Results, x0: number): string => {
  const curve: Array<any> = results.scale?.curve ?? []
  const out = [text(x0, PANEL.top - 30, "Scale: members on one host", `font-weight="bold"`)]
  if (curve.length === 0) return out.concat(text(x0, PANEL.top + 20, "(not measured in this run)")).join("\n")
  // Members on a log axis (50 to 500 spreads evenly); one point sits in the middle.
  const logs = curve.map((c) => Math.log(c.members))
  const [lo, hi] = [Math.min(...logs), Math.max(...logs)]
  const maxT = ceiling(Math.max(...curve.map((c) => c.convergedMs)))
  const maxC = ceiling(Math.max(...curve.map((c) => c.cpuMsPerMemberPerBeat)))
  const x = (n: number) => x0 + (hi === lo ? 0.5 : 0.06 + 0.88 * (Math.log(n) - lo) / (hi - lo)) * PANEL.w
  const yT = (v: number) => PANEL.top + PANEL.h - (v / maxT) * PANEL.h
  const yC = (v: number) => PANEL.top + PANEL.h - (v / maxC) * PANEL.h
  out.push(`<line x1="${x0}" y1="${yT(0)}" x2="${x0 + PANEL.w}" y2="${yT(0)}" stroke="#555"/>`)
  for (const tick of [0, maxT / 2, maxT]) out.push(text(x0 - 6, yT(tick) + 4, fmtMs(tick), `text-anchor="end" font-size="11" fill="${COLORS.cluster}"`))
  for (const tick of [0, maxC / 2, maxC]) out.push(text(x0 + PANEL.w + 6, yC(tick) + 4, `${tick} ms`, `font-size="11" fill="${COLORS.cpu}"`))
  const line = (y: (v: number) => number, key: string, color: string) => {
    const pts = curve.map((c) => `${x(c.members).toFixed(1)},${y(c[key]).toFixed(1)}`)
    return [`<polyline points="${pts.join(" ")}" fill="none" stroke="${color}" stroke-width="2"/>`]
      .concat(curve.map((c) => `<circle cx="${x(c.members).toFixed(1)}" cy="${y(c[key]).toFixed(1)}" r="3" fill="${color}"/>`))
  }
  out.push(...line(yT, "convergedMs", COLORS.cluster), ...line(yC, "cpuMsPerMemberPerBeat", COLORS.cpu))
  for (const c of curve) out.push(text(x(c.members), yT(0) + 16, String(c.members), `text-anchor="middle" font-size="11"`))
  out.push(text(x0 + PANEL.w / 2, yT(0) + 30, "members (log scale)", `text-anchor="middle" font-size="11"`))
  out.push(text(x0, PANEL.top + PANEL.h + 48, "all know all (left)", `font-size="11" fill="${COLORS.cluster}"`))
  out.push(text(x0 + 150, PANEL.top + PANEL.h + 48, "CPU a member a heartbeat (right)", `font-size="11" fill="${COLORS.cpu}"`))
  return out.join("\n")
}

/** The chart of one run of `npm run bench`. */
export const chartSvg = (results: Results): string =>
  [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" role="img">`,
    "<title>cluster-comm bench: discovery of N processes started at once, and the scale curve</title>",
    `<rect width="${W}" height="${H}" fill="white"/>`,
    text(20, 20, `cluster-comm bench, ${String(results.date ?? "").slice(0, 10)}${results.quick ? " (quick run)" : ""}`, `font-size="12" fill="#555"`),
    discoveryPanel(results, 60),
    scalePanel(results, 500),
    "</svg>",
    ""
  ].join("\n")

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [from = "bench/results/latest.json", to = "docs/benchmarks.svg"] = process.argv.slice(2)
  writeFileSync(to, chartSvg(JSON.parse(readFileSync(from, "utf8"))))
  console.log(`wrote ${to}`)
}
