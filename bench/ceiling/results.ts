/**
 * The ceiling bench's numbers, kept pure: per-run samples in; per contender and protocol the min /
 * median / max of GiB/s and CPU-seconds per GiB, the markdown tables and the chart's gnuplot input out.
 */
import { type Spread, spread } from "../lab/results.js";
import type { Protocol } from "./origin.js";

const GIB = 2 ** 30;

export interface Sample {
  contender: string;
  protocol: Protocol;
  run: number;
  bytes: number;
  wallSeconds: number;
  /** User and system CPU of the client: the process (Node contenders) or the command and its children. */
  userSeconds: number;
  systemSeconds: number;
  /** Peak RSS (VmHWM) of the process, or of the command's largest process. */
  maxRssBytes: number;
  /** Node contenders: the main thread's user + system CPU, read just before exit. */
  mainThreadSeconds?: number;
  /** Node contenders: CPU seconds by thread name, of the threads alive at exit. */
  threads?: Record<string, number>;
  /** coldstart: the job's own timer (from its summary line), without process start-up. */
  jobSeconds?: number;
  /** Requests nginx logged during the run. */
  requests: number;
  /** The machine's 1-minute load average just before the run. */
  load1: number;
  /** nginx's CPU (master and workers) during the run. */
  originSeconds: number;
  /** The whole machine's busy CPU during the run (/proc/stat): client, origin and everything else. */
  machineSeconds: number;
  /** Busy cores of the whole machine in the idle second before the run. */
  busyBefore: number;
}

export interface Row {
  contender: string;
  protocol: Protocol;
  runs: number;
  gibPerSecond: Spread;
  wallSeconds: Spread;
  cpuPerGib: Spread;
  userPerGib: Spread;
  systemPerGib: Spread;
  mainThreadPerGib?: Spread;
  /** Median CPU-seconds per GiB by thread name (Node contenders). */
  threadsPerGib?: Record<string, number>;
  jobGibPerSecond?: Spread;
  peakRssMb: Spread;
  requests: Spread;
  /** nginx's CPU per GiB served. */
  originPerGib: Spread;
  /** The rest of the machine's busy CPU per GiB: kernel work not charged to a process, the bench, other tenants. */
  restPerGib: Spread;
  /** Busy CPU-seconds of the whole machine per second of wall time. */
  busyCores: Spread;
}

/** One row per contender and protocol, in first-seen order. */
export function summarize(samples: Sample[]): Row[] {
  const groups = new Map<string, Sample[]>();
  for (const s of samples) {
    const key = `${s.contender}\u0000${s.protocol}`;
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups.values()].map((g) => {
    const first = g[0] as Sample;
    const gib = (s: Sample) => s.bytes / GIB;
    const row: Row = {
      contender: first.contender,
      protocol: first.protocol,
      runs: g.length,
      gibPerSecond: spread(g.map((s) => gib(s) / s.wallSeconds)),
      wallSeconds: spread(g.map((s) => s.wallSeconds)),
      cpuPerGib: spread(g.map((s) => (s.userSeconds + s.systemSeconds) / gib(s))),
      userPerGib: spread(g.map((s) => s.userSeconds / gib(s))),
      systemPerGib: spread(g.map((s) => s.systemSeconds / gib(s))),
      peakRssMb: spread(g.map((s) => s.maxRssBytes / 1e6)),
      requests: spread(g.map((s) => s.requests)),
      originPerGib: spread(g.map((s) => s.originSeconds / gib(s))),
      restPerGib: spread(
        g.map(
          (s) => Math.max(0, s.machineSeconds - s.originSeconds - s.userSeconds - s.systemSeconds) / gib(s),
        ),
      ),
      busyCores: spread(g.map((s) => s.machineSeconds / s.wallSeconds)),
    };
    const main = g.filter((s) => s.mainThreadSeconds !== undefined);
    if (main.length) row.mainThreadPerGib = spread(main.map((s) => (s.mainThreadSeconds as number) / gib(s)));
    const job = g.filter((s) => s.jobSeconds !== undefined);
    if (job.length) row.jobGibPerSecond = spread(job.map((s) => gib(s) / (s.jobSeconds as number)));
    const names = new Set(g.flatMap((s) => Object.keys(s.threads ?? {})));
    if (names.size)
      row.threadsPerGib = Object.fromEntries(
        [...names].map((n) => [n, spread(g.map((s) => (s.threads?.[n] ?? 0) / gib(s))).median]),
      );
    return row;
  });
}

const f = (x: number, d = 2) => x.toFixed(d);
const range = (s: Spread, d = 2) => `${f(s.median, d)} (${f(s.min, d)}–${f(s.max, d)})`;

/** The main table: a row per contender and protocol. */
export function table(rows: Row[]): string[] {
  return [
    "| contender | protocol | GiB/s median (min–max) | CPU-s/GiB median (min–max) | user / system CPU-s/GiB | main thread CPU-s/GiB | peak RSS MB | requests |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ...rows.map(
      (r) =>
        `| ${r.contender} | ${r.protocol} | ${range(r.gibPerSecond)} | ${range(r.cpuPerGib)} | ` +
        `${f(r.userPerGib.median)} / ${f(r.systemPerGib.median)} | ` +
        `${r.mainThreadPerGib ? range(r.mainThreadPerGib) : "–"} | ${f(r.peakRssMb.median, 0)} | ${f(r.requests.median, 0)} |`,
    ),
  ];
}

/** Where a Node contender's CPU went, by thread (threads alive at exit), median CPU-s per GiB. */
export function threadTable(rows: Row[]): string[] {
  const withThreads = rows.filter((r) => r.threadsPerGib);
  if (!withThreads.length) return [];
  const names = [...new Set(withThreads.flatMap((r) => Object.keys(r.threadsPerGib ?? {})))].sort();
  // What the threads alive at exit do not account for: threads that ended (and rounding to ticks).
  const rest = (r: Row) =>
    r.cpuPerGib.median - Object.values(r.threadsPerGib ?? {}).reduce((a, b) => a + b, 0);
  return [
    `| contender | protocol | process | ${names.join(" | ")} | ended before exit |`,
    `| --- | --- | --- | ${names.map(() => "---").join(" | ")} | --- |`,
    ...withThreads.map(
      (r) =>
        `| ${r.contender} | ${r.protocol} | ${f(r.cpuPerGib.median)} | ` +
        `${names.map((n) => (r.threadsPerGib?.[n] !== undefined ? f(r.threadsPerGib[n] as number) : "–")).join(" | ")} | ` +
        `${f(Math.max(0, rest(r)))} |`,
    ),
  ];
}

/** The whole machine during the runs: who used the cores (medians, CPU-s per GiB). */
export function machineTable(rows: Row[], cores: number): string[] {
  return [
    `| contender | protocol | client | origin (nginx) | rest of the machine | busy cores of ${cores} |`,
    "| --- | --- | --- | --- | --- | --- |",
    ...rows.map(
      (r) =>
        `| ${r.contender} | ${r.protocol} | ${f(r.cpuPerGib.median)} | ${f(r.originPerGib.median)} | ` +
        `${f(r.restPerGib.median)} | ${range(r.busyCores)} |`,
    ),
  ];
}

/** Every run, as measured (failed runs are listed apart). */
export function runTable(samples: Sample[]): string[] {
  return [
    "| run | contender | protocol | wall s | GiB/s | user s | system s | main thread s | peak RSS MB | requests | nginx CPU-s | rest of the machine CPU-s | busy cores before | load (1 min) before |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...samples.map(
      (s) =>
        `| ${s.run + 1} | ${s.contender} | ${s.protocol} | ${f(s.wallSeconds)} | ${f(s.bytes / GIB / s.wallSeconds)} | ` +
        `${f(s.userSeconds)} | ${f(s.systemSeconds)} | ${s.mainThreadSeconds !== undefined ? f(s.mainThreadSeconds) : "–"} | ` +
        `${f(s.maxRssBytes / 1e6, 0)} | ${s.requests} | ${f(s.originSeconds)} | ` +
        `${f(Math.max(0, s.machineSeconds - s.originSeconds - s.userSeconds - s.systemSeconds))} | ${f(s.busyBefore)} | ${f(s.load1)} |`,
    ),
  ];
}

/** One colour per contender, in order; its main thread's bar is the same colour, hatched. */
const COLOURS = ["#9400d3", "#009e73", "#56b4e9", "#e69f00", "#f0e442", "#0072b2", "#e51e10"];

/**
 * gnuplot's input for the chart: two panels of clustered bars (a cluster per protocol, a bar per
 * contender) with min–max error bars, GiB/s on the left and CPU-s per GiB on the right, where each
 * Node contender's main thread gets a hatched bar of its own. `short` names contenders in the legend.
 */
export function chart(
  rows: Row[],
  files: { speed: string; cpu: string; png: string },
  title: string,
  short: Record<string, string> = {},
): { speed: string; cpu: string; script: string } {
  const protocols = [...new Set(rows.map((r) => r.protocol))];
  const contenders = [...new Set(rows.map((r) => r.contender))];
  const q = (s: string) => `"${s.replaceAll('"', "'")}"`;
  const cell = (s: Spread | undefined) =>
    s ? [s.median, s.min, s.max].map((x) => f(x, 3)) : ["NaN", "NaN", "NaN"];
  const find = (c: string, p: Protocol) => rows.find((r) => r.contender === c && r.protocol === p);
  interface Series {
    title: string;
    colour: string;
    hatched: boolean;
    value: (p: Protocol) => Spread | undefined;
  }
  const block = (series: Series[]) =>
    [
      // A comment, not a header row: a header row would take the first cluster's place.
      `# ${["protocol", ...series.flatMap((s) => [s.title, "min", "max"])].map(q).join(" ")}`,
      ...protocols.map((p) => [q(p), ...series.flatMap((s) => cell(s.value(p)))].join(" ")),
    ].join("\n");
  const colour = (c: string) => COLOURS[contenders.indexOf(c) % COLOURS.length] as string;
  const name = (c: string) => short[c] ?? c;
  const speedSeries: Series[] = contenders.map((c) => ({
    title: name(c),
    colour: colour(c),
    hatched: false,
    value: (p) => find(c, p)?.gibPerSecond,
  }));
  const cpuSeries: Series[] = [
    ...contenders.map((c) => ({
      title: name(c),
      colour: colour(c),
      hatched: false,
      value: (p: Protocol) => find(c, p)?.cpuPerGib,
    })),
    ...contenders
      .filter((c) => rows.some((r) => r.contender === c && r.mainThreadPerGib))
      .map((c) => ({
        title: `${name(c)}: main thread`,
        colour: colour(c),
        hatched: true,
        value: (p: Protocol) => find(c, p)?.mainThreadPerGib,
      })),
  ];
  const plot = (file: string, series: Series[]) =>
    `plot ${series
      .map(
        (s, i) =>
          `${i ? "''" : q(file)} using ${2 + 3 * i}:${3 + 3 * i}:${4 + 3 * i}${i ? "" : ":xtic(1)"} ` +
          `title ${q(s.title)} lc rgb ${q(s.colour)} fs ${s.hatched ? "pattern 4" : "solid 0.85"} border -1`,
      )
      .join(", ")}`;
  const script = [
    "set terminal pngcairo size 1400,650 font ',10'",
    `set output ${q(files.png)}`,
    `set multiplot layout 1,2 title ${q(title)}`,
    "set style data histograms",
    "set style histogram errorbars gap 1 lw 1",
    "set boxwidth 0.9",
    "set grid ytics",
    "set yrange [0:*]",
    "set key top right",
    "set title 'GiB/s (median; bars: min–max of the runs)'",
    "set ylabel 'GiB/s'",
    plot(files.speed, speedSeries),
    "set title 'CPU-seconds per GiB of the client (median; min–max)'",
    "set ylabel 'CPU-s/GiB'",
    plot(files.cpu, cpuSeries),
    "unset multiplot",
  ];
  return { speed: `${block(speedSeries)}\n`, cpu: `${block(cpuSeries)}\n`, script: `${script.join("\n")}\n` };
}
