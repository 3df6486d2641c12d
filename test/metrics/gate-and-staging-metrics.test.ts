/**
 * The metrics of issue 20: coldstart_build_info, the per-model staging gauges (bytes to go, ETA: read
 * at each scrape from the jobs, gone when the model is not staging) and the gate's waiters and wait
 * histogram, set by a real ModelManager staging from the in-memory object source on a clock the test
 * moves.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import type { ModelManager } from "../../src/models/model-manager.js";
import { MemoryObjectSource } from "../../src/s3/memory-object-source.js";
import type { GetOptions, GetResponse } from "../../src/s3/object-source.js";
import { testManager } from "../support/manager.js";
import { waitFor } from "../support/wait.js";

const MiB = 1024 * 1024;

/** The value of one exposition line (`name{labels}`), or undefined when the series is not there. */
async function sample(m: Metrics, series: string): Promise<number | undefined> {
  const line = (await m.registry.metrics()).split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe("coldstart_build_info and the per-model staging gauges", () => {
  it("build_info carries the labels it is set with", async () => {
    const m = new Metrics(new Registry(), { defaultMetrics: false });
    m.buildInfo.set({ version: "1.2.3", node_version: "v24.0.0" }, 1);
    expect(await sample(m, 'coldstart_build_info{version="1.2.3",node_version="v24.0.0"}')).toBe(1);
  });

  it("read the source at each scrape: an unknown ETA has no series, a model that stops staging leaves", async () => {
    const m = new Metrics(new Registry(), { defaultMetrics: false });
    expect(await m.registry.metrics()).not.toMatch(/^coldstart_model_remaining_bytes\{/m);
    let now = [
      { model: "org/a", remainingBytes: 100, etaSeconds: 7 },
      { model: "org/b", remainingBytes: 5, etaSeconds: null },
    ];
    m.stagingFrom(() => now);
    expect(await sample(m, 'coldstart_model_remaining_bytes{model="org/a"}')).toBe(100);
    expect(await sample(m, 'coldstart_model_eta_seconds{model="org/a"}')).toBe(7);
    expect(await sample(m, 'coldstart_model_remaining_bytes{model="org/b"}')).toBe(5);
    expect(await sample(m, 'coldstart_model_eta_seconds{model="org/b"}')).toBeUndefined();
    now = [{ model: "org/b", remainingBytes: 1, etaSeconds: 1 }];
    expect(await sample(m, 'coldstart_model_remaining_bytes{model="org/a"}')).toBeUndefined();
    expect(await sample(m, 'coldstart_model_eta_seconds{model="org/a"}')).toBeUndefined();
    expect(await sample(m, 'coldstart_model_eta_seconds{model="org/b"}')).toBe(1);
  });

  it("exports both gates of the wait histogram at zero from the start", async () => {
    const m = new Metrics(new Registry(), { defaultMetrics: false });
    expect(await sample(m, 'coldstart_gate_wait_seconds_count{gate="handshake"}')).toBe(0);
    expect(await sample(m, 'coldstart_gate_wait_seconds_count{gate="csi"}')).toBe(0);
    expect(await sample(m, "coldstart_gate_waiters")).toBe(0);
  });
});

/** The in-memory store, except that a GET of a key in `held` waits until the test lets it go. */
class HeldSource extends MemoryObjectSource {
  readonly held = new Map<string, Promise<void>>();
  readonly #release = new Map<string, () => void>();

  hold(key: string): void {
    this.held.set(key, new Promise((resolve) => this.#release.set(key, resolve)));
  }

  release(key: string): void {
    this.#release.get(key)?.();
  }

  override async get(bucket: string, key: string, options: GetOptions): Promise<GetResponse> {
    await this.held.get(key);
    return super.get(bucket, key, options);
  }
}

describe("the model manager sets them", () => {
  let root: string;
  let source: HeldSource;
  let metrics: Metrics;
  let manager: ModelManager;
  let now = Date.parse("2026-12-01T00:00:00Z");

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "cs-gate-metrics-"));
    source = new HeldSource();
    metrics = new Metrics(new Registry(), { defaultMetrics: false });
    const config = loadConfig({
      env: { COLDSTART_ROOT: root, COLDSTART_SOURCES_ALLOW: "s3://models/**", COLDSTART_PART_SIZE: "1MiB" },
    });
    manager = await testManager({ root, source, config, metrics, now: () => now });
    metrics.stagingFrom(() => manager.staging());
    await manager.start();
  });
  afterEach(async () => {
    await manager.drain(0);
    await rm(root, { recursive: true, force: true });
  });

  /** A two-file model whose second file's GET waits: staging stops with 1 MiB of 3 to go... */
  function model(id: string): string {
    source.put("models", `${id}/a.bin`, Buffer.alloc(2 * MiB, 1));
    source.put("models", `${id}/b.bin`, Buffer.alloc(MiB, 2));
    source.hold(`${id}/b.bin`);
    return `s3://models/${id}/`;
  }

  it("bytes to go while a model stages, the pods waiting at the gate, and how long they waited (handshake)", async () => {
    await manager.request("org/m", { source: model("org/m") }, { waited: true });
    const left = 'coldstart_model_remaining_bytes{model="org/m"}';
    await waitFor(async () => (await sample(metrics, left)) === MiB, { what: "1 MiB left" });
    // A pod's long-poll holds it at the gate.
    const waiting = manager.waitReady("org/m", 60_000);
    await waitFor(async () => (await sample(metrics, "coldstart_gate_waiters")) === 1, { what: "a waiter" });
    now += 42_000;
    source.release("org/m/b.bin");
    expect((await waiting).outcome).toBe("ready");
    expect(await sample(metrics, "coldstart_gate_waiters")).toBe(0);
    // The model is not staging any more: its series are gone.
    expect(await sample(metrics, left)).toBeUndefined();
    expect(await sample(metrics, 'coldstart_model_eta_seconds{model="org/m"}')).toBeUndefined();
    const handed = await manager.markInUse("org/m");
    expect(handed?.waitedSeconds).toBe(42);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_sum{gate="handshake"}')).toBe(42);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_bucket{le="30",gate="handshake"}')).toBe(0);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_bucket{le="60",gate="handshake"}')).toBe(1);
    // A pod that finds the model ready passes the gate without waiting.
    await manager.waitReady("org/m", 1_000);
    await manager.markInUse("org/m");
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_count{gate="handshake"}')).toBe(2);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_sum{gate="handshake"}')).toBe(42);
  });

  it("each named waiter's wait is its own: two pods on one model, by handshake and by CSI volume", async () => {
    await manager.request("org/w", { source: model("org/w") }, { waited: true });
    const a = manager.waitReady("org/w", 60_000, undefined, "pod-a");
    now += 30_000;
    const b = manager.waitReady("org/w", 60_000, undefined, "pod-b");
    // A CSI volume whose first publish gives up at its bound; the kubelet's retry keeps its start.
    expect((await manager.waitReady("org/w", 0, undefined, "/pods/c/volume")).outcome).toBe("timeout");
    now += 12_000;
    source.release("org/w/b.bin");
    expect([(await a).outcome, (await b).outcome]).toEqual(["ready", "ready"]);
    // A pod that finds it ready waited nothing, though it is the first handed the model.
    expect((await manager.waitReady("org/w", 60_000, undefined, "pod-d")).outcome).toBe("ready");
    expect((await manager.markInUse("org/w", "pod-d"))?.waitedSeconds).toBe(0);
    expect((await manager.markInUse("org/w", "pod-b"))?.waitedSeconds).toBe(12);
    expect((await manager.markInUse("org/w", "pod-a"))?.waitedSeconds).toBe(42);
    expect((await manager.waitReady("org/w", 60_000, undefined, "/pods/c/volume")).outcome).toBe("ready");
    await manager.hold("org/w", "/pods/c/volume");
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_sum{gate="handshake"}')).toBe(54);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_count{gate="handshake"}')).toBe(3);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_sum{gate="csi"}')).toBe(12);
  });

  it("a CSI publish's wait, across the kubelet's retries, lands under gate csi; a volume found at start does not", async () => {
    await manager.request("org/c", { source: model("org/c") }, { waited: true });
    // The first publish gives up at its bound (the kubelet retries) while the model stages.
    expect((await manager.waitReady("org/c", 0, undefined, "/pods/a/volume")).outcome).toBe("timeout");
    now += 90_000;
    source.release("org/c/b.bin");
    expect((await manager.waitReady("org/c", 60_000, undefined, "/pods/a/volume")).outcome).toBe("ready");
    expect(await manager.hold("org/c", "/pods/a/volume")).toBeDefined();
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_sum{gate="csi"}')).toBe(90);
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_count{gate="handshake"}')).toBe(0);
    await manager.hold("org/c", "/pods/b/volume", { evenIfNotReady: true });
    expect(await sample(metrics, 'coldstart_gate_wait_seconds_count{gate="csi"}')).toBe(1);
  });
});
