// Regression (issue 15, defect 2): with a model half staged, 7-8 new ranged GETs began after SIGTERM
// and the daemon took nearly its whole grace period to exit. After SIGTERM no part may start; the
// parts in flight finish (journaled) and the daemon exits as soon as none is left.
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import type { RecordedRequest } from "../support/fault-proxy.js";
import {
  coldstart,
  type DaemonProcess,
  finish,
  killDaemons,
  NO_GPU_FLAGS,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { syntheticModel } from "../support/synthetic-model.js";
import { settles, waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-shutdown-");
const MiB = 1024 * 1024;
const TOKEN = "shutdown-test-token";
const daemons: DaemonProcess[] = [];

afterEach(async () => {
  await killDaemons(daemons);
});

describe("SIGTERM", () => {
  // Two daemon starts and a ready poll of up to 120 s: more than the default test timeout allows.
  it("starts no GET after the signal, lets the parts in flight finish, exits at once, and the next daemon resumes", {
    timeout: 180_000,
  }, async () => {
    const bucket = await freshBucket(fx.client, "sd");
    const files = syntheticModel({ shards: 2, shardBytes: 8 * MiB });
    await putFiles(fx.client, bucket, "m/", files);
    const tokens = join(fx.work, "tokens");
    await writeFile(tokens, `${TOKEN}\n`);
    const root = join(fx.work, "root");
    const args = [
      "--root",
      root,
      "--socket",
      join(fx.work, "run", "coldstart.sock"),
      "--token-file",
      tokens,
      "--allow-source",
      "s3://sd-*/**",
      "--endpoint",
      fx.proxy.url,
      "--path-style",
      "--part-size",
      "1MiB",
      "--concurrency",
      "4",
      // Far longer than the test: exiting before it ends means "as soon as nothing is in flight".
      "--shutdown-grace",
      "10m",
      ...NO_GPU_FLAGS,
    ];
    // Every object GET waits at the proxy until the gate opens: the daemon's four slots fill up and
    // nothing else can start, so what arrives after the signal was started after it.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const isObjectGet = (r: RecordedRequest) => r.method === "GET" && r.path.startsWith(`/${bucket}/m/`);
    fx.proxy.addRule({ match: { predicate: isObjectGet }, action: { kind: "hook", fn: () => gate } });
    const d = await startDaemonProcess(args, fx.s3);
    daemons.push(d);

    const put = await callDaemon({ url: d.api, token: TOKEN }, "PUT", "/v1/models/drain", {
      source: `s3://${bucket}/m/`,
    });
    expect(put.status).toBe(202);
    const gets = () => fx.proxy.requests.filter(isObjectGet).length;
    await waitFor(() => gets() === 4, { timeoutMs: 45_000, what: "four GETs in flight" });
    d.child.kill("SIGTERM");
    await waitFor(() => d.logs.some((l) => l.msg === "draining"), {
      timeoutMs: 45_000,
      what: "the daemon to drain",
    });
    const atSignal = gets();
    const what = (r: RecordedRequest) => `${r.path} ${r.headers.range ?? "whole"}`;
    const inFlight = fx.proxy.requests.filter(isObjectGet).map(what);
    open();
    // Its grace is 10 minutes: ending only at the test's timeout would mean it waited for the grace.
    const exit = await settles(d.exited, {
      timeoutMs: 60_000,
      what: "the daemon's exit once the parts in flight end",
    });
    expect(exit.code, exit.stderr).toBe(0);
    expect(gets() - atSignal, "GETs started after SIGTERM").toBe(0);
    const models = JSON.parse(await readFile(join(root, "state", "models.json"), "utf8")).models;
    expect(models[0]).toMatchObject({ id: "drain", state: "staging" });

    fx.proxy.clearRules();
    fx.proxy.resetStats();
    const next = await startDaemonProcess(args, fx.s3);
    daemons.push(next);
    const ready = await callDaemon(
      { url: next.api, token: TOKEN },
      "GET",
      "/v1/models/drain/ready?timeoutSeconds=120",
      undefined,
      { timeoutMs: 130_000 },
    );
    expect(ready.status).toBe(200);
    expect(await digests(join(root, "models", "drain"), files)).toEqual(expectedDigests(files));
    // The four parts in flight at the signal were journaled (or, whole files, committed): none is
    // fetched again, and everything else is fetched once.
    const again = fx.proxy.requests.filter(isObjectGet).map(what);
    expect(again.filter((r) => inFlight.includes(r))).toEqual([]);
    const parts = files.reduce(
      (n, f) => n + (f.relPath.endsWith(".safetensors") ? Math.ceil(f.body.length / MiB) : 1),
      0,
    );
    expect(again.length).toBe(parts - 4);
  });

  it("during the first node probe stops the daemon before it starts: exit 0, nothing listening", {
    timeout: 120_000,
  }, async () => {
    // A stand-in nvidia-smi (the GPU fallback probe) that says it started, then holds the probe until
    // the test lets it go: the signal lands while the daemon is still looking at its node.
    const smi = join(fx.work, "held-nvidia-smi");
    const started = join(fx.work, "smi-started");
    const go = join(fx.work, "smi-go");
    await writeFile(
      smi,
      `#!/bin/sh\ntouch '${started}'\nwhile [ ! -e '${go}' ]; do sleep 0.05; done\nexit 1\n`,
      {
        mode: 0o755,
      },
    );
    const child = coldstart(
      [
        "daemon",
        "--root",
        join(fx.work, "early-root"),
        "--socket",
        join(fx.work, "early.sock"),
        "--auth",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--gds",
        "off",
        "--nvml-library",
        "/nonexistent",
        "--nvidia-smi",
        smi,
      ],
      fx.s3,
    );
    const exited = finish(child);
    try {
      await waitFor(
        () =>
          stat(started).then(
            () => true,
            () => false,
          ),
        { what: "the probe to start" },
      );
      child.kill("SIGTERM");
      await writeFile(go, "");
      const out = await settles(exited, { what: "the daemon to exit", timeoutMs: 60_000 });
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toContain("stopped before starting");
      expect(out.stdout).not.toContain("coldstart daemon ready");
    } finally {
      child.kill("SIGKILL");
      await writeFile(go, "");
    }
  });
});
