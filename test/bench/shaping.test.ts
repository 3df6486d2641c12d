/**
 * The lab's tc batch (bench/lab/shaping.ts), checked as text: the kernel parts need root and run in
 * `npx tsx bench/lab/netlab.ts verify`.
 */
import { describe, expect, it } from "vitest";
import { classFor, PORT_BASE, PORT_WINDOW, shapingBatch } from "../../bench/lab/shaping.js";

const rate = (s: string) => {
  const m = /^(\d+)(kbit|mbit)$/.exec(s);
  if (!m) throw new Error(`not a rate: ${s}`);
  return Number(m[1]) * (m[2] === "mbit" ? 1000 : 1);
};

describe("lab shaping", () => {
  const lines = shapingBatch({ dev: "vs", perConnectionMbit: 40, linkMbit: 400 });

  it("gives every client port its own class, capped at the per-connection rate", () => {
    const classes = new Set(Array.from({ length: PORT_WINDOW }, (_, i) => classFor(PORT_BASE + i)));
    expect(classes.size).toBe(PORT_WINDOW);
    const perPort = lines.filter((l) => /^class add dev vs parent 1:1 classid 1:1[0-3][0-9a-f]{2} /.test(l));
    expect(perPort).toHaveLength(PORT_WINDOW);
    for (const l of perPort) expect(l).toMatch(/ ceil 40mbit /);
    expect(() => classFor(PORT_BASE - 1)).toThrow(RangeError);
    expect(() => classFor(PORT_BASE + PORT_WINDOW)).toThrow(RangeError);
  });

  it("cannot exceed the link: the classes' assured rates add up to at most the link rate", () => {
    // HTB grants each class its own rate whatever its parent's; the lab's first cut gave each class
    // the per-connection cap as its rate, and 25 connections got 1.5 Gbit/s through an 800 Mbit link.
    const assured = lines
      .filter((l) => l.startsWith("class add dev vs parent 1:1 "))
      .map((l) => rate(/ rate (\S+)/.exec(l)?.[1] ?? ""));
    expect(assured.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(400_000);
    expect(lines).toContain("class add dev vs parent 1: classid 1:1 htb rate 400mbit ceil 400mbit");
  });

  it("routes each port through the u32 hash bucket of its low byte to its class", () => {
    const filters = lines.filter((l) => l.includes(" u32 ht 2:"));
    expect(filters).toHaveLength(PORT_WINDOW);
    for (const port of [PORT_BASE, PORT_BASE + 255, PORT_BASE + 256, PORT_BASE + PORT_WINDOW - 1]) {
      const bucket = (port & 0xff).toString(16);
      expect(filters).toContain(
        `filter add dev vs parent 1: prio 5 protocol ip u32 ht 2:${bucket}: match ip dport ${port} 0xffff flowid ${classFor(port)}`,
      );
    }
    expect(lines).toContain(
      "filter add dev vs parent 1: prio 5 protocol ip u32 ht 800:: match ip protocol 6 0xff match ip dst 0.0.0.0/0 hashkey mask 0x000000ff at 20 link 2:",
    );
  });

  it("refuses a per-connection cap above the link", () => {
    expect(() => shapingBatch({ dev: "vs", perConnectionMbit: 500, linkMbit: 400 })).toThrow(
      /per-connection/,
    );
    expect(() => shapingBatch({ dev: "vs", perConnectionMbit: 0, linkMbit: 400 })).toThrow(RangeError);
  });
});
