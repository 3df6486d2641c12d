/**
 * The alerts and the dashboard against a real Prometheus (Debian's `prometheus` package) that scrapes
 * a real daemon staging a model from the real S3 server: the target carries the `node` label the
 * ServiceMonitor adds; the rules are loaded and evaluated; then every PromQL expression of the
 * dashboard and of the rules goes through Prometheus's HTTP API, where it must parse and evaluate,
 * and must name only metric and label names the daemon exports. A panel with a typo fails here.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { callDaemon } from "../../src/api/client.js";
import { Metrics } from "../../src/metrics/metrics.js";
import {
  type DaemonProcess,
  freePort,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";
import {
  alertRules,
  dashboardExpressions,
  type Expression,
  exportedNames,
  loadPrometheusRule,
  requirePrometheusTool,
  ruleExpressions,
  unknownNames,
} from "./promql.js";

const fx = useS3Fixture("cs-prom-");
const MiB = 1024 * 1024;
const TOKEN = "prometheus-test-token";
const NODE = "gpu-node-7";
const MODEL = "org/scraped";
const daemons: DaemonProcess[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  await killDaemons(daemons);
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await new Promise((resolve) =>
      child.exitCode !== null ? resolve(undefined) : child.once("exit", resolve),
    );
  }
});

interface PromResponse<T> {
  status: "success" | "error";
  errorType?: string;
  error?: string;
  data: T;
}

interface Sample {
  metric: Record<string, string>;
  value?: [number, string];
}

/** Prometheus on a free loopback port, scraping `target` every second as node NODE, with the rules loaded. */
async function startPrometheus(binary: string, target: string): Promise<string> {
  const dir = join(fx.work, "prometheus");
  await mkdir(join(dir, "data"), { recursive: true });
  await writeFile(join(dir, "coldstart.rules.yml"), stringify(loadPrometheusRule().spec));
  await writeFile(
    join(dir, "prometheus.yml"),
    stringify({
      global: { scrape_interval: "1s", evaluation_interval: "1s" },
      rule_files: ["coldstart.rules.yml"],
      scrape_configs: [
        {
          job_name: "coldstart-metrics",
          scrape_timeout: "1s",
          // What components/servicemonitor's relabeling gives a real target: the pod's node name.
          static_configs: [{ targets: [new URL(target).host], labels: { node: NODE } }],
        },
      ],
    }),
  );
  const port = await freePort();
  const child = spawn(
    binary,
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  children.push(child);
  let stderr = "";
  child.stderr?.on("data", (d) => (stderr += d));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited ${child.exitCode}: ${stderr}`);
      return (await fetch(`${url}/-/ready`).catch(() => undefined))?.ok;
    },
    { what: "prometheus ready", timeoutMs: 60_000, intervalMs: 100 },
  );
  return url;
}

async function query<T = Sample[]>(
  prom: string,
  expr: string,
): Promise<PromResponse<{ resultType: string; result: T }>> {
  const res = await fetch(`${prom}/api/v1/query`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ query: expr }),
  });
  return (await res.json()) as PromResponse<{ resultType: string; result: T }>;
}

/** Every problem with the expressions: a parse or evaluation error from Prometheus, or an unknown name. */
async function problems(
  prom: string,
  expressions: Expression[],
  exported: ReturnType<typeof exportedNames>,
): Promise<string[]> {
  const out: string[] = [];
  for (const { where, expr } of expressions) {
    const answer = await query(prom, expr);
    if (answer.status !== "success") out.push(`${where}: ${answer.errorType}: ${answer.error}`);
    for (const name of unknownNames(expr, exported)) out.push(`${where}: ${name} is not exported`);
  }
  return out;
}

/** Label names each metric of the registry declares, those without a series yet included. */
function declaredLabels(): Set<string> {
  const m = new Metrics(new Registry(), { defaultMetrics: false });
  return new Set(
    m.registry
      .getMetricsAsArray()
      .flatMap((metric) => [...((metric as unknown as { labelNames?: string[] }).labelNames ?? [])]),
  );
}

describe("the dashboard and the alerts against a real Prometheus scraping a real daemon", () => {
  it("every expression parses, evaluates and names only what the daemon exports; a typo is caught", async (ctx) => {
    const binary = requirePrometheusTool("prometheus", ctx.skip);
    const tokens = join(fx.work, "tokens");
    await writeFile(tokens, `${TOKEN}\n`);
    const daemon = await startDaemonProcess(
      [
        "--root",
        join(fx.work, "root"),
        "--socket",
        join(fx.work, "cs.sock"),
        "--token-file",
        tokens,
        "--allow-source",
        "s3://prom-*/**",
        "--endpoint",
        fx.proxy.url,
        "--path-style",
        "--part-size",
        "1MiB",
        ...NO_GPU_FLAGS,
      ],
      fx.s3,
    );
    daemons.push(daemon);
    const prom = await startPrometheus(binary, daemon.metrics);
    await waitFor(async () => (await query(prom, `up{node="${NODE}"} == 1`)).data?.result.length === 1, {
      what: "the daemon scraped",
      timeoutMs: 60_000,
    });

    // Stage a model as a pod would: ask for it, then wait at the gate until it is ready.
    const bucket = await freshBucket(fx.client, "prom");
    await putFiles(fx.client, bucket, "m/", syntheticModel({ shards: 4, shardBytes: 2 * MiB }));
    const ep = { url: daemon.api, token: TOKEN };
    const path = `/v1/models/${encodeURIComponent(MODEL)}`;
    // The shards' ranged GETs wait at the proxy until Prometheus has scraped the bytes to go: the
    // model is seen staging however fast or slow the machine.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      action: { kind: "hook", fn: () => held.opened },
    });
    const put = await callDaemon(ep, "PUT", path, { source: `s3://${bucket}/m/` });
    expect(put.status, JSON.stringify(put.body)).toBeLessThan(300);
    try {
      await waitFor(
        async () =>
          (await query(prom, `coldstart_model_remaining_bytes{node="${NODE}"} > 0`)).data?.result.length ===
          1,
        { what: "the bytes to go scraped while the model stages", timeoutMs: 60_000 },
      );
    } finally {
      held.open();
    }
    const ready = await callDaemon(ep, "GET", `${path}/ready?timeoutSeconds=120`, undefined, {
      timeoutMs: 125_000,
    });
    expect(ready.status, JSON.stringify(ready.body)).toBe(200);

    // Prometheus holds what the daemon did, under the node label: the model ready, its bytes to go
    // while it staged, the wait at the gate, the build.
    await waitFor(
      async () =>
        (await query(prom, `coldstart_models{node="${NODE}",state="ready"} == 1`)).data?.result.length ===
          1 &&
        (await query(prom, `coldstart_gate_wait_seconds_count{node="${NODE}",gate="handshake"} == 1`)).data
          ?.result.length === 1,
      { what: "the ready model and the handshake scraped", timeoutMs: 60_000 },
    );
    const staged = await query(prom, `max_over_time(coldstart_model_remaining_bytes{node="${NODE}"}[10m])`);
    expect(staged.data.result.map((s) => s.metric.model)).toEqual([MODEL]);
    expect(Number(staged.data.result[0]?.value?.[1])).toBeGreaterThan(0);
    expect((await query(prom, `coldstart_model_remaining_bytes{node="${NODE}"}`)).data.result).toEqual([]);
    const build = await query(prom, `coldstart_build_info{node="${NODE}"}`);
    expect(build.data.result[0]?.metric).toMatchObject({ node_version: process.version });

    // The names the daemon exports: every family its /metrics lists (a histogram's series too), and
    // every label those families declare or carry.
    const text = await (await fetch(`${daemon.metrics}/metrics`)).text();
    const exported = exportedNames(text);
    for (const label of declaredLabels()) exported.labels.add(label);

    const expressions = [...dashboardExpressions(), ...ruleExpressions()];
    expect(expressions.length).toBeGreaterThan(40);
    expect(await problems(prom, expressions, exported)).toEqual([]);

    // The check has teeth: a misspelt metric, a misspelt label and a syntax error are each reported.
    const broken = await problems(
      prom,
      [
        { where: "typo", expr: "sum by (node) (rate(coldstart_download_byte_total[1m]))" },
        { where: "label", expr: 'sum by (nod) (coldstart_models{state="ready"})' },
        { where: "syntax", expr: "sum by (node) (rate(coldstart_download_bytes_total[1m])" },
      ],
      exported,
    );
    expect(broken).toEqual([
      "typo: metric coldstart_download_byte_total is not exported",
      "label: label nod is not exported",
      expect.stringMatching(/^syntax: bad_data: .*parse error/),
    ]);

    // The rules are loaded and evaluate without error against the daemon's series.
    await waitFor(
      async () => {
        const res = (await (await fetch(`${prom}/api/v1/rules`)).json()) as PromResponse<{
          groups: { rules: { name: string; health: string; lastError?: string }[] }[];
        }>;
        const rules = res.data.groups.flatMap((g) => g.rules);
        const bad = rules.filter((r) => r.health !== "ok");
        if (bad.some((r) => r.lastError)) throw new Error(`rules failed: ${JSON.stringify(bad)}`);
        return rules.length === alertRules().length && bad.length === 0;
      },
      { what: "every rule evaluated", timeoutMs: 60_000 },
    );
  });
});
