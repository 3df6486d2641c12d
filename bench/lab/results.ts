/**
 * The lab's numbers, kept pure so they can be tested: per-run samples in; per scenario and tool the
 * min / median / max, the issue's targets judged, RESULTS.md's tables and the chart's data out.
 */

export interface Sample {
  scenario: string;
  tool: string;
  run: number;
  bytes: number;
  wallSeconds: number;
  /** User + system CPU of the command and every child it waited for. */
  cpuSeconds: number;
  /** Peak RSS of its largest process. */
  maxRssBytes: number;
}

export interface Spread {
  min: number;
  median: number;
  max: number;
}

export interface Row {
  scenario: string;
  tool: string;
  runs: number;
  wallSeconds: Spread;
  mbPerSecond: Spread;
  /** Median MB/s as a share of the link cap (goodput over the cap the shaping counts packets against). */
  linkShare: number;
  cpuSecondsPerGb: Spread;
  peakRssMb: Spread;
}

export function spread(xs: number[]): Spread {
  if (xs.length === 0) throw new Error("spread of no samples");
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
  return { min: s[0] as number, median, max: s.at(-1) as number };
}

/** One row per scenario and tool, in first-seen order. */
export function summarize(samples: Sample[], linkMbit: number): Row[] {
  const groups = new Map<string, Sample[]>();
  for (const s of samples) {
    const key = `${s.scenario}\u0000${s.tool}`;
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups.values()].map((g) => {
    const first = g[0] as Sample;
    const mbPerSecond = spread(g.map((s) => s.bytes / 1e6 / s.wallSeconds));
    return {
      scenario: first.scenario,
      tool: first.tool,
      runs: g.length,
      wallSeconds: spread(g.map((s) => s.wallSeconds)),
      mbPerSecond,
      linkShare: (mbPerSecond.median * 8) / linkMbit,
      cpuSecondsPerGb: spread(g.map((s) => s.cpuSeconds / (s.bytes / 1e9))),
      peakRssMb: spread(g.map((s) => s.maxRssBytes / 1e6)),
    };
  });
}

export interface Verdict {
  target: string;
  met: boolean;
  detail: string;
}

/**
 * The issue's targets for `coldstart pull` at default settings, judged on medians: ≥ 90% of the link
 * on the sharded model; faster than every baseline in every scenario; CPU-seconds per GB no worse than
 * the most efficient baseline; peak RSS under 200 MB.
 */
export function judge(rows: Row[], ours: string, shardedScenario = "sharded"): Verdict[] {
  const mine = rows.filter((r) => r.tool === ours);
  const others = (scenario: string) => rows.filter((r) => r.scenario === scenario && r.tool !== ours);
  const verdicts: Verdict[] = [];
  const sharded = mine.find((r) => r.scenario === shardedScenario);
  if (sharded)
    verdicts.push({
      target: "≥ 90% of the link cap on the sharded model",
      met: sharded.linkShare >= 0.9,
      detail: `${pct(sharded.linkShare)} (${sharded.mbPerSecond.median.toFixed(1)} MB/s median)`,
    });
  for (const r of mine) {
    const best = others(r.scenario).sort((a, b) => b.mbPerSecond.median - a.mbPerSecond.median)[0];
    if (!best) continue;
    verdicts.push({
      target: `faster than every baseline: ${r.scenario}`,
      met: r.mbPerSecond.median > best.mbPerSecond.median,
      detail: `${r.mbPerSecond.median.toFixed(1)} MB/s vs ${best.mbPerSecond.median.toFixed(1)} (${best.tool}): ${ratio(r.mbPerSecond.median / best.mbPerSecond.median)}`,
    });
  }
  for (const r of mine) {
    const best = others(r.scenario).sort((a, b) => a.cpuSecondsPerGb.median - b.cpuSecondsPerGb.median)[0];
    if (!best) continue;
    verdicts.push({
      target: `CPU-s per GB ≤ the most efficient baseline: ${r.scenario}`,
      met: r.cpuSecondsPerGb.median <= best.cpuSecondsPerGb.median,
      detail: `${r.cpuSecondsPerGb.median.toFixed(2)} vs ${best.cpuSecondsPerGb.median.toFixed(2)} (${best.tool}): ${ratio(r.cpuSecondsPerGb.median / best.cpuSecondsPerGb.median)}`,
    });
  }
  const rss = Math.max(...mine.map((r) => r.peakRssMb.max));
  if (mine.length)
    verdicts.push({
      target: "peak RSS < 200 MB",
      met: rss < 200,
      detail: `${rss.toFixed(0)} MB, the highest of any run`,
    });
  return verdicts;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const ratio = (x: number) => `${x.toFixed(2)}×`;
const f = (x: number, d = 1) => x.toFixed(d);
const range = (s: Spread, d = 1) => `${f(s.median, d)} (${f(s.min, d)}–${f(s.max, d)})`;

/** One markdown table per scenario. */
export function tables(rows: Row[], titles: Record<string, string>): string[] {
  const out: string[] = [];
  for (const scenario of new Set(rows.map((r) => r.scenario))) {
    out.push(`### ${scenario}${titles[scenario] ? `: ${titles[scenario]}` : ""}`, "");
    out.push(
      "| tool | MB/s median (min–max) | % of link | wall s median (min–max) | CPU-s per GB | peak RSS MB |",
      "| --- | --- | --- | --- | --- | --- |",
    );
    for (const r of rows.filter((x) => x.scenario === scenario))
      out.push(
        `| ${r.tool} | ${range(r.mbPerSecond)} | ${pct(r.linkShare)} | ${range(r.wallSeconds, 2)} | ${f(r.cpuSecondsPerGb.median, 2)} | ${f(r.peakRssMb.median, 0)} |`,
      );
    out.push("");
  }
  return out;
}

/**
 * gnuplot's input for the chart (median MB/s, a row per scenario, a column per tool) and the script
 * that draws it as clustered bars with the link cap as a dashed line.
 */
export function chart(
  rows: Row[],
  linkMbit: number,
  dataFile: string,
  pngFile: string,
): { data: string; script: string } {
  const scenarios = [...new Set(rows.map((r) => r.scenario))];
  const tools = [...new Set(rows.map((r) => r.tool))];
  const q = (s: string) => `"${s.replaceAll('"', "'")}"`;
  // gnuplot clusters by row: a row per scenario, a column (one bar) per tool.
  const data = [
    ["scenario", ...tools].map(q).join(" "),
    ...scenarios.map((s) =>
      [
        q(s),
        ...tools.map((t) => {
          const r = rows.find((x) => x.tool === t && x.scenario === s);
          return r ? f(r.mbPerSecond.median, 2) : "NaN";
        }),
      ].join(" "),
    ),
  ].join("\n");
  const script = [
    "set terminal pngcairo size 1200,600 font ',10'",
    `set output ${q(pngFile)}`,
    "set title 'MB/s per tool per scenario (median of runs; shaped S3-like link)'",
    "set style data histograms",
    "set style histogram clustered gap 1",
    "set style fill solid 0.85 border -1",
    "set boxwidth 0.9",
    "set ylabel 'MB/s'",
    `set yrange [0:${f((linkMbit / 8) * 1.15, 2)}]`,
    "set grid ytics",
    "set key below vertical maxrows 3",
    `set arrow from graph 0, first ${f(linkMbit / 8, 2)} to graph 1, first ${f(linkMbit / 8, 2)} nohead dt 2 lw 2`,
    `set label 'link cap ${linkMbit} Mbit/s' at graph 0.01, first ${f((linkMbit / 8) * 1.03, 2)}`,
    `plot for [i=2:${tools.length + 1}] ${q(dataFile)} using i:xtic(1) title columnheader(i)`,
  ];
  return { data: `${data}\n`, script: `${script.join("\n")}\n` };
}
