/**
 * `npm run bench:csi-gate` (root, Linux, nginx): how long a pod waits after its model is ready, when
 * the kubelet retries NodePublishVolume on its own schedule (0.5 s doubling to 2 min 2 s after each
 * failure, plus its 100 ms reconciler tick: test/support/kubelet.ts). Two policies on the same daemon
 * build, same model, same staging time:
 *
 *   hold:   the shipped default: the publish call waits while the model stages (csi.publishWaitMs)
 *   refuse: --csi-publish-wait 0: "not ready" at once, as a driver that does not hold would answer
 *
 * The staging time is set with the daemon's rate cap (the model's size over --seconds), from nginx on
 * loopback (bench/ceiling/origin.ts). The gap is the publish's success minus the model's readyAt;
 * calls counts the kubelet's NodePublishVolume calls.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { callDaemon } from "../src/api/client.js";
import { Kubelet, kubeletBackoffMs, unmountUnder } from "../test/support/kubelet.js";
import { writeModel } from "./ceiling/model.js";
import { startOrigin, stopProcess } from "./ceiling/origin.js";
import { withTeardown } from "./ceiling/teardown.js";

const ROOT = resolve(import.meta.dirname, "..");
const BIN = join(ROOT, "bin/coldstart.js");
const BUCKET = "bucket";
const PREFIX = "gate/";
const TOKEN = "bench-csi-gate";
const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "4,12,30" },
    mib: { type: "string", default: "64" },
  },
});

interface Row {
  policy: "hold" | "refuse";
  stagingSeconds: number;
  calls: number;
  gapSeconds: number;
}

async function runOne(
  work: string,
  endpoint: string,
  policy: Row["policy"],
  targetSeconds: number,
  bytes: number,
): Promise<Row> {
  const dir = mkdtempSync(join(work, `${policy}-${targetSeconds}-`));
  const tokens = join(dir, "tokens");
  writeFileSync(tokens, `${TOKEN}\n`);
  const socket = join(dir, "csi.sock");
  const child: ChildProcess = spawn(
    process.execPath,
    [
      BIN,
      "daemon",
      ...["--root", join(dir, "root"), "--socket", join(dir, "run", "cs.sock"), "--token-file", tokens],
      ...["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--node-labels", "off"],
      ...["--allow-source", `s3://${BUCKET}/**`, "--endpoint", endpoint, "--path-style"],
      ...[
        "--csi-socket",
        socket,
        "--csi-kubelet-dir",
        dir,
        "--csi-allow",
        `bench=s3://${BUCKET}/**`,
        "--page-cache-warm",
        "off",
      ],
      ...["--max-bytes-per-second", String(Math.ceil(bytes / targetSeconds))],
      ...["--gds", "off", "--nvml-library", "/nonexistent", "--nvidia-smi", "/nonexistent"],
      ...(policy === "refuse" ? ["--csi-publish-wait", "0"] : []),
    ],
    {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        AWS_ACCESS_KEY_ID: "bench",
        AWS_SECRET_ACCESS_KEY: "bench",
        AWS_REGION: "us-east-1",
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  try {
    const api = await new Promise<string>((done, fail) => {
      let buffered = "";
      child.stdout?.on("data", (d: Buffer) => {
        const lines = (buffered + d.toString()).split("\n");
        buffered = lines.pop() ?? "";
        for (const line of lines) {
          if (line.includes('"coldstart daemon ready"')) done(String(JSON.parse(line).api));
        }
      });
      child.once("exit", (code) => fail(new Error(`daemon exited ${code}`)));
    });
    const kubelet = new Kubelet(socket);
    const pods = join(dir, "pods");
    const pod = { namespace: "bench", name: "vllm", uid: `u-${policy}-${targetSeconds}` };
    const target = await Kubelet.targetFor(pods, pod);
    let calls = 0;
    let okAt = 0;
    for (let failures = 0; ; ) {
      calls++;
      const r = await kubelet.publish(
        "csi-bench",
        target,
        { model: "m", source: `s3://${BUCKET}/${PREFIX}` },
        pod,
      );
      if (r.ok) {
        okAt = Date.now();
        break;
      }
      failures++;
      await new Promise((resolve) => setTimeout(resolve, kubeletBackoffMs(failures) + 100));
    }
    const status = (await callDaemon({ url: api, token: TOKEN }, "GET", "/v1/models/m")).body as {
      readyAt: string;
      startedAt: string;
    };
    kubelet.close();
    await unmountUnder(dir);
    const readyAt = Date.parse(status.readyAt);
    return {
      policy,
      stagingSeconds: (readyAt - Date.parse(status.startedAt)) / 1000,
      calls,
      gapSeconds: (okAt - readyAt) / 1000,
    };
  } finally {
    stopProcess(child);
    await unmountUnder(dir);
  }
}

await withTeardown(async (t) => {
  const work = mkdtempSync(join(tmpdir(), "cs-bench-gate-"));
  const origin = join(work, "origin");
  mkdirSync(join(origin, BUCKET, PREFIX), { recursive: true });
  const bytes = Number(args.mib) * 2 ** 20;
  const files = writeModel(join(origin, BUCKET, PREFIX), bytes, 2);
  const o = await startOrigin(
    { dir: join(work, "nginx"), root: origin, bucket: BUCKET, prefix: PREFIX, files },
    t,
  );
  const total = files.reduce((n, f) => n + f.size, 0);
  const rows: Row[] = [];
  for (const seconds of String(args.seconds).split(",").map(Number)) {
    for (const policy of ["hold", "refuse"] as const) {
      const row = await runOne(work, o.endpoints.http, policy, seconds, total);
      rows.push(row);
      console.log(
        `${policy.padEnd(6)} staging ${row.stagingSeconds.toFixed(1).padStart(5)} s: ${String(row.calls).padStart(2)} publish calls, ready-to-mounted gap ${row.gapSeconds.toFixed(3)} s`,
      );
    }
  }
  writeFileSync(join(ROOT, "bench", "results-csi-gate.json"), `${JSON.stringify(rows, null, 1)}\n`);
});
