import type { ChildProcess } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import { modelLabelKey } from "../../src/kube/node-labels.js";
import { KubeApiServerDouble, writeKubeconfig } from "../support/kube-api-double.js";
import {
  coldstart,
  type DaemonProcess,
  finish,
  jsonLines,
  killDaemons,
  type Outcome,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { file, syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-daemon-");
const MiB = 1024 * 1024;
const TOKEN = "daemon-test-token";
const daemons: DaemonProcess[] = [];
/** `coldstart wait` children: a failed test must not leave them retrying for their whole --timeout. */
const waiters: ChildProcess[] = [];

afterEach(async () => {
  for (const w of waiters.splice(0)) if (w.exitCode === null && w.signalCode === null) w.kill("SIGKILL");
  await killDaemons(daemons);
});

interface Paths {
  root: string;
  socket: string;
  tokens: string;
}

async function paths(): Promise<Paths> {
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  return { root: join(fx.work, "root"), socket: join(fx.work, "run", "coldstart.sock"), tokens };
}

async function daemon(p: Paths, extra: string[] = []): Promise<DaemonProcess> {
  const d = await startDaemonProcess(
    [
      "--root",
      p.root,
      "--socket",
      p.socket,
      "--token-file",
      p.tokens,
      "--allow-source",
      "s3://dm-*/**",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--part-size",
      "1MiB",
      "--concurrency",
      "4",
      "--log-level",
      "info",
      ...extra,
    ],
    fx.s3,
  );
  daemons.push(d);
  return d;
}

/** `coldstart wait`; it prints a progress line (and polls again) every `progressIntervalMs`. */
function wait(p: Paths, id: string, args: string[] = [], progressIntervalMs = 1000) {
  const child = coldstart(
    [
      "wait",
      id,
      "--socket",
      p.socket,
      "--json",
      "--progress-interval-ms",
      String(progressIntervalMs),
      ...args,
    ],
    fx.s3,
  );
  waiters.push(child);
  return child;
}

/**
 * A waiter's long poll lasts its progress interval; this one is the API's longest (300 s), far beyond
 * the test's own timeout, so a waiter that only learns of "ready" when its poll runs out hangs the
 * test instead of passing late.
 */
const LONG_POLL_MS = 300_000;

async function seed(shards = 2, shardBytes = 2 * MiB) {
  const bucket = await freshBucket(fx.client, "dm");
  const files = syntheticModel({ shards, shardBytes });
  await putFiles(fx.client, bucket, "m/", files);
  return { bucket, files, source: `s3://${bucket}/m/` };
}

const lastJson = (o: Outcome) => JSON.parse(o.stdout.trim().split("\n").at(-1) ?? "null");

describe("coldstart daemon + coldstart wait", () => {
  it("wait --source stages on demand over the socket, exits 0 and writes the env file", async () => {
    const p = await paths();
    // Node facts pinned to "no GPU, GDS off" whatever machine runs this (test/daemon/node-facts.test.ts
    // covers the other answers).
    await daemon(p, [
      "--gds",
      "off",
      "--nvml-library",
      "/nonexistent/libnvidia-ml.so.1",
      "--nvidia-smi",
      "/nonexistent",
    ]);
    const { source, files } = await seed();
    const envFile = join(fx.work, "env");

    const out = await finish(wait(p, "org/demo", ["--source", source, "--env-file", envFile]));

    expect(out.code, out.stderr).toBe(0);
    expect(lastJson(out)).toMatchObject({ event: "ready", id: "org/demo", state: "ready" });
    const modelPath = join(p.root, "models", "org", "demo");
    expect(await readFile(envFile, "utf8")).toBe(
      `COLDSTART_MODEL_ID='org/demo'\nCOLDSTART_MODEL_PATH='${modelPath}'\n` +
        "COLDSTART_LOAD_FORMAT='safetensors'\nCOLDSTART_GDS='unavailable'\nCOLDSTART_GPU_PRODUCT=''\n",
    );
    expect(await digests(modelPath, files)).toEqual(expectedDigests(files));
    expect((await stat(p.socket)).mode & 0o777).toBe(0o660);
  });

  it("wait --include/--exclude stages only the matching files; other filters for the id are a conflict", async () => {
    const p = await paths();
    await daemon(p);
    const { source, bucket, files } = await seed();
    // One file the filters must leave in S3: matched by no include.
    await putFiles(fx.client, bucket, "m/", [file("original/consolidated.00.pth", Buffer.alloc(4096, 7))]);

    const out = await finish(
      wait(p, "org/filtered", [
        "--source",
        source,
        "--include",
        "*.safetensors",
        "--include",
        "*.json",
        "--exclude",
        "generation_config.json",
      ]),
    );
    expect(out.code, out.stderr).toBe(0);
    const kept = files.filter((f) => f.relPath !== "generation_config.json");
    const modelPath = join(p.root, "models", "org", "filtered");
    expect(await digests(modelPath, kept)).toEqual(expectedDigests(kept));
    expect(lastJson(out)).toMatchObject({ state: "ready", filesTotal: kept.length });
    await expect(stat(join(modelPath, "generation_config.json"))).rejects.toThrow(/ENOENT/);
    await expect(stat(join(modelPath, "original"))).rejects.toThrow(/ENOENT/);

    // The same id with other filters is another model: refused, naming the conflict, nothing staged.
    const other = await finish(wait(p, "org/filtered", ["--source", source]));
    expect([other.code, other.stderr]).toEqual([
      2,
      expect.stringMatching(/^coldstart: CS_MODEL_SOURCE_CONFLICT: /),
    ]);
    // Filters without a source have nothing to filter.
    const alone = await finish(wait(p, "org/filtered", ["--include", "*.json"]));
    expect([alone.code, alone.stderr]).toEqual([
      2,
      "coldstart: CS_CONFIG_INVALID: --include and --exclude need --source: without it the daemon is only asked for a model it holds\n",
    ]);
  });

  it("20 concurrent waits of one model: one download, every waiter answered as soon as it is ready", {
    timeout: 240_000,
  }, async () => {
    const p = await paths();
    await daemon(p);
    const { source, files } = await seed(2, 3 * MiB);
    // Hold the download until every waiter is connected and polling.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      times: 1,
      action: { kind: "hook", fn: () => held.opened },
    });
    const children = Array.from({ length: 20 }, () =>
      wait(p, "shared/model", ["--source", source], LONG_POLL_MS),
    );
    const printed = children.map(jsonLines);
    const outcomes = Promise.all(children.map(finish));
    try {
      await waitFor(
        () => {
          const gone = children.find((c) => c.exitCode !== null || c.signalCode !== null);
          if (gone)
            throw new Error(`a waiter exited (${gone.exitCode ?? gone.signalCode}) before the release`);
          return printed.every((lines) => lines().some((l) => l.event === "progress"));
        },
        { timeoutMs: 150_000, what: "all 20 waiters to print progress (polling)" },
      );
    } finally {
      held.open();
    }
    const results = await outcomes;

    for (const r of results) expect(r.code, r.stderr).toBe(0);
    // One staging job: each object listed once and each part fetched once.
    expect(fx.proxy.requests.filter((r) => r.query.includes("list-type=2"))).toHaveLength(1);
    const shard = files[0];
    if (!shard) throw new Error("no shard");
    const shardGets = fx.proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(shard.relPath));
    expect(shardGets).toHaveLength(Math.ceil(shard.body.length / MiB));
  });

  it("exits 1 with the daemon's error when staging fails", async () => {
    const p = await paths();
    await daemon(p);
    const bucket = await freshBucket(fx.client, "dm");
    const out = await finish(wait(p, "empty", ["--source", `s3://${bucket}/nothing/`]));
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(/^coldstart: CS_MODEL_FAILED: staging empty failed: CS_NO_OBJECTS: /);
  });

  // A daemon and four CLI processes, one after another.
  it("exits 3 when the model is not ready within --timeout, 4 when no daemon answers, 2 for bad input", {
    timeout: 120_000,
  }, async () => {
    const p = await paths();
    const d = await daemon(p);
    const { source } = await seed();
    // Every part waits at the proxy until the waiter has given up: the model cannot be ready in time,
    // however slow the machine.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      action: { kind: "hook", fn: () => held.opened },
    });
    try {
      const slow = await finish(wait(p, "slow", ["--source", source, "--timeout", "2s"]));
      expect([slow.code, slow.stderr]).toEqual([3, expect.stringMatching(/CS_NOT_READY/)]);
      // Its last poll said so (last=1): the daemon counts one handshake that timed out.
      const text = await (await fetch(`${d.metrics}/metrics`)).text();
      expect(text).toContain('coldstart_handshake_waits_total{outcome="timeout"} 1');
      // Every poll of that handshake named it with one waiter id: its gate wait is its own.
      const polls = d.logs
        .map((l) => String((l.req as { url?: unknown } | undefined)?.url ?? ""))
        .filter((u) => u.startsWith("/v1/models/slow/ready?"));
      expect(polls.length).toBeGreaterThan(0);
      const waiters = new Set(polls.map((u) => new URL(u, "http://x").searchParams.get("waiter")));
      expect([...waiters]).toEqual([
        expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
      ]);
    } finally {
      held.open();
    }

    const nobody = await finish(wait({ ...p, socket: join(fx.work, "none.sock") }, "x", ["--timeout", "1s"]));
    expect([nobody.code, nobody.stderr]).toEqual([4, expect.stringMatching(/CS_DAEMON_UNREACHABLE/)]);

    const badId = await finish(wait(p, "a/../b", ["--source", source]));
    expect([badId.code, badId.stderr]).toEqual([2, expect.stringMatching(/CS_MODEL_ID_INVALID/)]);
    const forbidden = await finish(wait(p, "f", ["--source", "s3://elsewhere/m/"]));
    expect([forbidden.code, forbidden.stderr]).toEqual([2, expect.stringMatching(/CS_SOURCE_NOT_ALLOWED/)]);
  });

  it("survives a SIGKILL mid-staging: the restarted daemon resumes and the waiter succeeds", {
    timeout: 180_000,
  }, async () => {
    const p = await paths();
    const first = await daemon(p);
    const { source, files } = await seed(2, 8 * MiB);
    const total = files.reduce((n, f) => n + f.body.length, 0);
    // 18 ranged GETs (9 per shard, the last a few header bytes): the first 8 (at least 6 MiB) come
    // through, every later one waits at the proxy until after the kill, so the kill always lands
    // mid-model, past a third of it, with no shard complete: only the journals can spare a refetch.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      skip: 8,
      action: { kind: "hook", fn: () => held.opened },
    });
    const waiter = wait(p, "resume/me", ["--source", source, "--timeout", "120s"]);
    const printed = jsonLines(waiter);
    const waited = finish(waiter);
    await waitFor(
      () => {
        if (printed().some((l) => l.event === "ready")) throw new Error("model was ready before the kill");
        if (waiter.exitCode !== null) throw new Error(`the waiter exited ${waiter.exitCode} before the kill`);
        return printed().some((l) => l.event === "progress" && Number(l.bytesDone) > total / 3);
      },
      { timeoutMs: 60_000, what: "progress past a third of the model" },
    );
    first.child.kill("SIGKILL");
    await first.exited;
    fx.proxy.clearRules();
    held.open();
    await daemon(p);

    const out = await waited;
    expect(out.code, out.stderr).toBe(0);
    expect(await digests(join(p.root, "models", "resume", "me"), files)).toEqual(expectedDigests(files));
    // Only parts in flight at the kill (at most concurrency x part size) were fetched twice.
    expect(objectBytes(source) - total).toBeLessThanOrEqual(4 * MiB);
  });

  it("labels its node for ready models and drops the label when the model goes (API-server double)", async () => {
    const apiServer = new KubeApiServerDouble();
    const server = await apiServer.start();
    try {
      apiServer.addNode("gpu-node-1", { "kubernetes.io/hostname": "gpu-node-1" });
      const kubeconfig = await writeKubeconfig(join(fx.work, "kubeconfig"), server);
      const p = await paths();
      const d = await daemon(p, [
        "--node-name",
        "gpu-node-1",
        "--kubeconfig",
        kubeconfig,
        "--node-labels",
        "on",
        "--in-use-grace",
        "0",
      ]);
      const { source } = await seed(1, 1 * MiB);
      const api = { url: d.api, token: TOKEN };
      await callDaemon(api, "PUT", "/v1/models/org%2Flabelled", { source });
      expect((await callDaemon(api, "GET", "/v1/models/org%2Flabelled/ready?timeoutSeconds=30")).status).toBe(
        200,
      );
      const key = modelLabelKey("org/labelled");
      await waitFor(() => apiServer.labelsOf("gpu-node-1")[key] === "ready", { what: "the ready label" });
      expect(apiServer.labelsOf("gpu-node-1")["kubernetes.io/hostname"]).toBe("gpu-node-1");
      const patch = apiServer.requests.find((r) => r.method === "PATCH");
      expect(patch).toMatchObject({
        path: "/api/v1/nodes/gpu-node-1",
        contentType: "application/merge-patch+json",
      });

      // Handed to "a pod" by the ready poll, but with no grace period it may go at once.
      const del = await callDaemon(api, "DELETE", "/v1/models/org%2Flabelled");
      expect([del.status, del.body]).toEqual([204, undefined]);
      await waitFor(() => apiServer.labelsOf("gpu-node-1")[key] === undefined, {
        what: "the label to go",
      });
      expect(apiServer.labelsOf("gpu-node-1")["kubernetes.io/hostname"]).toBe("gpu-node-1");
    } finally {
      await apiServer.stop();
    }
  });

  it("refuses to start with auth none on a non-loopback listener", async () => {
    const p = await paths();
    const out = await finish(
      coldstart(
        ["daemon", "--root", p.root, "--socket", p.socket, "--auth", "none", "--listen", "0.0.0.0:0"],
        fx.s3,
      ),
    );
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/CS_CONFIG_INVALID: daemon.auth none is for local demos only/);
  });
});

/** Object bytes the proxy relayed for this source's keys (listings excluded). */
function objectBytes(source: string): number {
  const prefix = `/${source.slice("s3://".length)}`;
  let n = 0;
  for (const [path, bytes] of fx.proxy.bytesServed().byPath) if (path.startsWith(prefix)) n += bytes;
  return n;
}
