import { describe, expect, it } from "vitest";
import { chart, judge, type Sample, spread, summarize, tables } from "../../bench/lab/results.js";

const OURS = "coldstart pull";
const GB = 1e9;

/** A run that moved 1 GB: wall seconds, CPU seconds, peak RSS in MB. */
function run(scenario: string, tool: string, wall: number, cpu = 10, rssMb = 100, n = 0): Sample {
  return { scenario, tool, run: n, bytes: GB, wallSeconds: wall, cpuSeconds: cpu, maxRssBytes: rssMb * 1e6 };
}

describe("the lab's numbers", () => {
  it("takes min, median and max; an even count's median is the mean of the middle two", () => {
    expect(spread([3, 1, 2])).toEqual({ min: 1, median: 2, max: 3 });
    expect(spread([4, 1, 3, 2])).toEqual({ min: 1, median: 2.5, max: 4 });
    expect(() => spread([])).toThrow(/no samples/);
  });

  it("summarizes per scenario and tool: MB/s from bytes over wall time, CPU per GB, share of the link", () => {
    const rows = summarize(
      [
        run("sharded", OURS, 25, 8, 150, 0),
        run("sharded", OURS, 20, 10, 160, 1),
        run("sharded", OURS, 40, 12, 170, 2),
      ],
      400,
    );
    expect(rows).toHaveLength(1);
    const [r] = rows;
    expect(r?.runs).toBe(3);
    // 1 GB in 20, 25 and 40 s.
    expect(r?.mbPerSecond).toEqual({ min: 25, median: 40, max: 50 });
    expect(r?.wallSeconds.median).toBe(25);
    // 40 MB/s is 320 Mbit/s of a 400 Mbit/s link.
    expect(r?.linkShare).toBeCloseTo(0.8);
    expect(r?.cpuSecondsPerGb.median).toBe(10);
    expect(r?.peakRssMb.max).toBe(170);
  });

  it("judges the issue's targets on medians, naming the best baseline", () => {
    const rows = summarize(
      [
        // 1 GB in 22 s is 45.5 MB/s: 90.9% of 400 Mbit/s.
        run("sharded", OURS, 22, 9, 150),
        run("sharded", "rclone", 23, 6, 50),
        run("sharded", "aws", 30, 12, 80),
        run("small", OURS, 10, 20, 210),
        run("small", "rclone", 5, 4, 60),
      ],
      400,
    );
    const verdicts = judge(rows, OURS);
    const by = (t: string) => verdicts.find((v) => v.target.includes(t));
    expect(by("90% of the link")?.met).toBe(true);
    expect(by("faster than every baseline: sharded")?.met).toBe(true);
    expect(by("faster than every baseline: small")).toMatchObject({ met: false });
    expect(by("faster than every baseline: small")?.detail).toMatch(/rclone.*0\.50×/);
    // 9 CPU-s per GB against rclone's 6: not met, whatever aws spends.
    expect(by("CPU-s per GB ≤ the most efficient baseline: sharded")).toMatchObject({ met: false });
    expect(by("CPU-s per GB ≤ the most efficient baseline: sharded")?.detail).toMatch(
      /9\.00 vs 6\.00 \(rclone\)/,
    );
    // The highest RSS of any run counts, not a median.
    expect(by("peak RSS")).toMatchObject({ met: false, detail: "210 MB, the highest of any run" });
  });

  it("just under 90% of the link is not met", () => {
    // 1 GB in 22.3 s: 44.8 MB/s, 89.7%.
    const [v] = judge(summarize([run("sharded", OURS, 22.3)], 400), OURS);
    expect(v).toMatchObject({ met: false });
    expect(v?.detail).toMatch(/^89\.7%/);
  });

  it("writes one markdown table per scenario", () => {
    const rows = summarize([run("large", OURS, 20), run("large", "rclone", 25), run("small", OURS, 10)], 400);
    const md = tables(rows, { large: "one big file" });
    expect(md).toContain("### large: one big file");
    expect(md).toContain("### small");
    expect(md.filter((l) => l.startsWith("| coldstart pull |"))).toHaveLength(2);
    expect(md).toContain("| rclone | 40.0 (40.0–40.0) | 80.0% | 25.00 (25.00–25.00) | 10.00 | 100 |");
  });

  it("lays the chart out a row per scenario and a column per tool, a missing one as NaN", () => {
    const rows = summarize([run("large", OURS, 20), run("large", "rclone", 25), run("small", OURS, 10)], 400);
    const { data, script } = chart(rows, 400, "/tmp/d.dat", "/tmp/c.png");
    expect(data.trim().split("\n")).toEqual([
      '"scenario" "coldstart pull" "rclone"',
      '"large" 50.00 40.00',
      '"small" 100.00 NaN',
    ]);
    expect(script).toContain('set output "/tmp/c.png"');
    expect(script).toContain("plot for [i=2:3]");
    // The link cap (400 Mbit/s = 50 MB/s) is drawn.
    expect(script).toContain("first 50.00");
  });
});
