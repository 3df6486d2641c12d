import { readFile } from "node:fs/promises";
import { Counter, Gauge, register as globalRegister, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { Metrics, metricNames, RETRY_REASONS, retryReason } from "../../src/metrics/metrics.js";
import { TransientError } from "../../src/s3/retry.js";

// Field → documented name, type and label names. The single source a reviewer checks against the brief.
const EXPECTED = {
  downloadBytes: ["coldstart_download_bytes_total", Counter, ["source"]],
  s3Requests: ["coldstart_s3_requests_total", Counter, ["operation", "status"]],
  s3Retries: ["coldstart_s3_retries_total", Counter, ["operation", "reason"]],
  s3InFlight: ["coldstart_s3_requests_in_flight", Gauge, []],
  stageDuration: ["coldstart_stage_duration_seconds", Histogram, ["stage"]],
  models: ["coldstart_models", Gauge, ["state"]],
  modelsWaitingForSpace: ["coldstart_models_waiting_for_space", Gauge, []],
  rootUsedBytes: ["coldstart_staging_root_used_bytes", Gauge, []],
  rootFreeBytes: ["coldstart_staging_root_free_bytes", Gauge, []],
  evictions: ["coldstart_evictions_total", Counter, ["reason"]],
  evictedBytes: ["coldstart_evicted_bytes_total", Counter, []],
  handshakeWaits: ["coldstart_handshake_waits_total", Counter, ["outcome"]],
  handshakeWaitDuration: ["coldstart_handshake_wait_duration_seconds", Histogram, []],
  gateWait: ["coldstart_gate_wait_seconds", Histogram, ["gate"]],
  gateWaiters: ["coldstart_gate_waiters", Gauge, []],
  modelRemainingBytes: ["coldstart_model_remaining_bytes", Gauge, ["model"]],
  modelEtaSeconds: ["coldstart_model_eta_seconds", Gauge, ["model"]],
  buildInfo: ["coldstart_build_info", Gauge, ["version", "node_version"]],
  httpRequests: ["coldstart_http_requests_total", Counter, ["route", "method", "status"]],
  gdsInfo: ["coldstart_gds_info", Gauge, ["verdict", "mode", "load_format"]],
  gdsReasons: ["coldstart_gds_reasons", Gauge, ["code"]],
  placementInfo: ["coldstart_placement_info", Gauge, ["placement", "fstype", "device"]],
  placementWarnings: ["coldstart_placement_warnings", Gauge, ["code"]],
  policyRefused: ["coldstart_policy_refused", Gauge, ["code", "field", "value"]],
  gpuInfo: ["coldstart_gpu_info", Gauge, ["index", "uuid", "name", "compute_capability", "driver_version"]],
  nativeAvailable: ["coldstart_native_addon_available", Gauge, []],
  compileCacheRestores: ["coldstart_compile_cache_restores_total", Counter, ["outcome"]],
  compileCacheRestoreBytes: ["coldstart_compile_cache_restore_bytes_total", Counter, []],
  compileCacheRestoreDuration: ["coldstart_compile_cache_restore_duration_seconds", Histogram, ["outcome"]],
  compileCachePublishes: ["coldstart_compile_cache_publishes_total", Counter, ["outcome"]],
  compileCachePublishBytes: ["coldstart_compile_cache_publish_bytes_total", Counter, []],
  compileCachePublishDuration: ["coldstart_compile_cache_publish_duration_seconds", Histogram, ["outcome"]],
  compileCacheSilentMisses: ["coldstart_compile_cache_silent_misses_total", Counter, []],
  compileCacheEvictions: ["coldstart_compile_cache_evictions_total", Counter, ["reason"]],
  compileCacheLocalBytes: ["coldstart_compile_cache_local_bytes", Gauge, []],
  peerBytes: ["coldstart_peer_bytes_total", Counter, ["direction"]],
  peerFallbacks: ["coldstart_peer_fallbacks_total", Counter, ["reason"]],
  mirrorRequests: ["coldstart_mirror_requests_total", Counter, ["kind", "outcome"]],
  mirrorBytes: ["coldstart_mirror_bytes_total", Counter, ["source"]],
  mirrorTagResolutions: ["coldstart_mirror_tag_resolutions_total", Counter, ["outcome"]],
  mirrorDigestMismatches: ["coldstart_mirror_digest_mismatches_total", Counter, ["source"]],
  mirrorConfigProblems: ["coldstart_mirror_config_problems", Gauge, ["code"]],
  csiPublishes: ["coldstart_csi_publishes_total", Counter, ["outcome"]],
  csiPublishDuration: ["coldstart_csi_publish_duration_seconds", Histogram, ["outcome"]],
  csiVolumes: ["coldstart_csi_volumes", Gauge, []],
  pageCacheWarms: ["coldstart_page_cache_warms_total", Counter, ["outcome"]],
  pageCacheWarmBytes: ["coldstart_page_cache_warm_bytes_total", Counter, []],
  pageCacheWarmDuration: ["coldstart_page_cache_warm_duration_seconds", Histogram, []],
} as const;

type MetricField = keyof typeof EXPECTED;

async function docHeadings(): Promise<string[]> {
  const text = await readFile(new URL("../../docs/metrics.md", import.meta.url), "utf8");
  return [...text.matchAll(/^## (coldstart_\S+)\s*$/gm)].map((m) => m[1] as string);
}

describe("Metrics", () => {
  it("registers every field under its documented name, type and labels", () => {
    const m = new Metrics(new Registry(), { defaultMetrics: false });
    for (const [field, [name, type, labels]] of Object.entries(EXPECTED)) {
      const metric = m[field as MetricField];
      expect(metric, field).toBeInstanceOf(type);
      expect(m.registry.getSingleMetric(name), field).toBe(metric);
      expect([...((metric as unknown as { labelNames: string[] }).labelNames ?? [])], field).toEqual(labels);
    }
    expect(metricNames(m).sort()).toEqual(
      Object.values(EXPECTED)
        .map(([name]) => name)
        .sort(),
    );
    // Every name follows coldstart_<thing>_<unit> in snake case.
    for (const name of metricNames(m)) expect(name).toMatch(/^coldstart_[a-z0-9]+(_[a-z0-9]+)*$/);
  });

  it("has a docs/metrics.md heading for each metric and none extra", async () => {
    const headings = await docHeadings();
    expect(new Set(headings).size, "duplicate headings").toBe(headings.length);
    expect(headings.sort()).toEqual(metricNames(new Metrics(new Registry())).sort());
  });

  it("renders the registry, default process metrics included", async () => {
    const m = new Metrics();
    m.downloadBytes.inc({ source: "models" }, 1024);
    m.s3Requests.inc({ operation: "get", status: "206" });
    m.s3Retries.inc({ operation: "get", reason: retryReason(new TransientError("no bytes (stall)")) });
    m.s3InFlight.inc();
    m.stageDuration.observe({ stage: "download" }, 12.5);
    m.models.set({ state: "ready" }, 2);
    m.rootUsedBytes.set(10);
    m.rootFreeBytes.set(20);
    m.evictions.inc({ reason: "watermark" });
    m.evictedBytes.inc(5);
    m.handshakeWaits.inc({ outcome: "ready" });
    m.handshakeWaitDuration.observe(0.2);
    m.httpRequests.inc({ route: "/v1/models/:name", method: "GET", status: "200" });

    const text = await m.registry.metrics();
    expect(text).toContain('coldstart_download_bytes_total{source="models"} 1024');
    expect(text).toContain('coldstart_s3_requests_total{operation="get",status="206"} 1');
    expect(text).toContain('coldstart_s3_retries_total{operation="get",reason="stall"} 1');
    expect(text).toContain("coldstart_s3_requests_in_flight 1");
    expect(text).toContain('coldstart_stage_duration_seconds_bucket{le="30",stage="download"} 1');
    expect(text).toContain('coldstart_stage_duration_seconds_bucket{le="3600",stage="download"} 1');
    expect(text).toContain('coldstart_models{state="ready"} 2');
    expect(text).toContain("# TYPE coldstart_evicted_bytes_total counter");
    expect(text).toContain(
      'coldstart_http_requests_total{route="/v1/models/:name",method="GET",status="200"} 1',
    );
    expect(text).toContain("process_cpu_user_seconds_total");
    expect(text).toContain("nodejs_eventloop_lag_seconds");
    for (const name of metricNames(m)) expect(text).toContain(`# HELP ${name} `);
  });

  it("exports the small closed label sets at zero before any event", async () => {
    const text = await new Metrics(new Registry(), { defaultMetrics: false }).registry.metrics();
    expect(text).toContain('coldstart_models{state="failed"} 0');
    expect(text).toContain('coldstart_evictions_total{reason="budget"} 0');
    expect(text).toContain('coldstart_handshake_waits_total{outcome="timeout"} 0');
    expect(text).not.toMatch(/^process_/m);
  });

  it("keeps separate instances apart and never touches the global registry", async () => {
    const before = globalRegister.getMetricsAsArray().length;
    const a = new Metrics();
    const b = new Metrics(new Registry());
    expect(a.registry).not.toBe(b.registry);
    a.evictedBytes.inc(7);
    expect(await a.registry.metrics()).toContain("coldstart_evicted_bytes_total 7");
    expect(await b.registry.metrics()).toContain("coldstart_evicted_bytes_total 0");
    expect(globalRegister.getMetricsAsArray().length).toBe(before);
  });

  it("uses the registry it is given", () => {
    const registry = new Registry();
    const m = new Metrics(registry, { defaultMetrics: false });
    expect(m.registry).toBe(registry);
    expect(registry.getSingleMetric("coldstart_models")).toBe(m.models);
    // Defining the same metrics twice in one registry is a programming error, and prom-client says so.
    expect(() => new Metrics(registry, { defaultMetrics: false })).toThrow(/already been registered/);
  });
});

function sdkError(status: number, name: string, message = name): Error {
  return Object.assign(new Error(message), { name, Code: name, $metadata: { httpStatusCode: status } });
}

function sysError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe("retryReason", () => {
  it.each([
    ["503 SlowDown", sdkError(503, "SlowDown", "Please reduce your request rate."), "slowdown"],
    [
      "503 SlowDown via Code only",
      Object.assign(sdkError(503, "ServiceUnavailable"), { Code: "SlowDown" }),
      "slowdown",
    ],
    ["503 without SlowDown", sdkError(503, "ServiceUnavailable"), "server_error"],
    ["500", sdkError(500, "InternalError"), "server_error"],
    ["502", sdkError(502, "BadGateway"), "server_error"],
    ["429", sdkError(429, "TooManyRequests"), "throttled"],
    ["408", sdkError(408, "RequestTimeout"), "timeout"],
    ["400 RequestTimeout", sdkError(400, "RequestTimeout"), "timeout"],
    ["ECONNRESET", sysError("ECONNRESET", "read ECONNRESET"), "reset"],
    ["EPIPE", sysError("EPIPE", "write EPIPE"), "reset"],
    ["socket hang up", new Error("socket hang up"), "reset"],
    ["aborted body", new Error("aborted"), "reset"],
    ["premature close", sysError("ERR_STREAM_PREMATURE_CLOSE", "Premature close"), "reset"],
    ["stall", new TransientError("no bytes for 30000 ms (stall)"), "stall"],
    ["truncated", new TransientError("body ended after 10 of 20 bytes"), "truncated"],
    ["other TransientError", new TransientError("something else"), "other"],
    ["TimeoutError", Object.assign(new Error("timed out"), { name: "TimeoutError" }), "timeout"],
    ["ETIMEDOUT", sysError("ETIMEDOUT", "connect ETIMEDOUT 10.0.0.1:443"), "timeout"],
    ["user abort", Object.assign(new Error("This operation was aborted"), { name: "AbortError" }), "other"],
    ["plain Error", new Error("boom"), "other"],
    ["string", "boom", "other"],
    ["null", null, "other"],
    ["undefined", undefined, "other"],
  ])("%s", (_label, err, expected) => {
    expect(retryReason(err)).toBe(expected);
  });

  it("only answers documented reasons", () => {
    expect(RETRY_REASONS).toContain(retryReason({ $metadata: { httpStatusCode: 599 } }));
  });
});
