/**
 * `npm run bench:peers`: N nodes staging one model, with and without peers, on one machine against
 * the local S3 server (RGW) behind the fault proxy, which counts the bytes S3 served.
 *
 * - independent: N daemons without peers stage at once (what N nodes pay today);
 * - peers: the first daemon stages; once it is ready, the other N-1 start at once with the first as
 *   their peer (node two onward, as when a node pool grows after its first node);
 * - together: N daemons that know each other stage at once (a scale-out: each takes the parts in
 *   its own random order and waits for parts a peer is fetching from S3).
 *
 * Reported: S3 egress and wall time until all N are ready, and their ratios. Every node's files are
 * digest-checked. Loopback is not a network: peers and S3 are equally close here, so the egress
 * ratio is the result to read; the times only show that peers cost no more than S3.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { callDaemon } from "../src/api/client.js";
import { startFaultProxy } from "../test/support/fault-proxy.js";
import { type DaemonProcess, freePort, NO_GPU_FLAGS, startDaemonProcess } from "../test/support/processes.js";
import { startRgw } from "../test/support/rgw.js";
import { freshBucket, putFiles, seedClient } from "../test/support/s3.js";
import { digests, expectedDigests } from "../test/support/stage.js";
import { syntheticModel } from "../test/support/synthetic-model.js";

const { values: opts } = parseArgs({
  options: {
    nodes: { type: "string", default: "4" },
    shards: { type: "string", default: "4" },
    "shard-mib": { type: "string", default: "64" },
  },
});
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const N = Number(opts.nodes);
const MODEL = "bench/model";
const TOKEN = "bench-peer-token";
const work = await mkdtemp(join(tmpdir(), "cs-bench-peers-"));
const rgw = await startRgw();
const proxy = await startFaultProxy(rgw.endpoint);
const running: DaemonProcess[] = [];
try {
  const client = seedClient(rgw);
  const bucket = await freshBucket(client, "bench-peers");
  const files = syntheticModel({
    shards: Number(opts.shards),
    shardBytes: Number(opts["shard-mib"]) * 1048576,
  });
  await putFiles(client, bucket, "m/", files, 4);
  client.destroy();
  const source = `s3://${bucket}/m/`;
  const modelBytes = files.reduce((n, f) => n + f.body.length, 0);
  await writeFile(join(work, "tokens"), `${TOKEN}\n`);

  const start = async (name: string, peers: string[], listen = "127.0.0.1:0") => {
    const d = await startDaemonProcess(
      [
        "--root",
        join(work, name),
        "--socket",
        join(work, `${name}.sock`),
        "--token-file",
        join(work, "tokens"),
        "--allow-source",
        "s3://bench-peers-*/**",
        "--endpoint",
        proxy.url,
        "--path-style",
        ...NO_GPU_FLAGS,
        // info: the harness waits for the "ready" line.
        "--log-level",
        "info",
        ...peers.flatMap((p) => ["--peer", p]),
        "--listen",
        listen,
      ],
      rgw,
      {},
      { built: true },
    );
    running.push(d);
    return d;
  };
  const stage = async (d: DaemonProcess) => {
    const ep = { url: d.api, token: TOKEN };
    await callDaemon(ep, "PUT", `/v1/models/${encodeURIComponent(MODEL)}`, { source });
    const res = await callDaemon(
      ep,
      "GET",
      `/v1/models/${encodeURIComponent(MODEL)}/ready?timeoutSeconds=300`,
      undefined,
      {
        timeoutMs: 310_000,
      },
    );
    if (res.status !== 200) throw new Error(`not ready: ${JSON.stringify(res.body)}`);
  };
  const check = async (name: string) => {
    const got = await digests(join(work, name, "models", ...MODEL.split("/")), files);
    if (JSON.stringify(got) !== JSON.stringify(expectedDigests(files)))
      throw new Error(`${name}: wrong bytes`);
  };
  const stopAll = async () => {
    for (const d of running.splice(0)) {
      d.child.kill("SIGKILL");
      await d.exited.catch(() => {});
    }
  };

  // independent
  proxy.resetStats();
  let t0 = performance.now();
  const alone = await Promise.all(Array.from({ length: N }, (_, i) => start(`ind-${i}`, [])));
  await Promise.all(alone.map(stage));
  const independent = { seconds: (performance.now() - t0) / 1000, s3Bytes: proxy.bytesServed().total };
  for (let i = 0; i < N; i++) await check(`ind-${i}`);
  await stopAll();

  // peers: the later daemons know every earlier one (the first is up before them).
  proxy.resetStats();
  t0 = performance.now();
  const first = await start("peer-0", []);
  await stage(first);
  const rest = await Promise.all(
    Array.from({ length: N - 1 }, (_, i) => start(`peer-${i + 1}`, [first.api])),
  );
  await Promise.all(rest.map(stage));
  const peers = { seconds: (performance.now() - t0) / 1000, s3Bytes: proxy.bytesServed().total };
  for (let i = 0; i < N; i++) await check(`peer-${i}`);
  await stopAll();

  // together: every daemon knows every other from the start.
  proxy.resetStats();
  const ports = await Promise.all(Array.from({ length: N }, freePort));
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  const all = await Promise.all(
    ports.map((port, i) =>
      start(
        `tog-${i}`,
        urls.filter((_, j) => j !== i),
        `127.0.0.1:${port}`,
      ),
    ),
  );
  t0 = performance.now();
  await Promise.all(all.map(stage));
  const together = { seconds: (performance.now() - t0) / 1000, s3Bytes: proxy.bytesServed().total };
  for (let i = 0; i < N; i++) await check(`tog-${i}`);
  await stopAll();

  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  console.log(`${N} nodes, model ${(modelBytes / 2 ** 20).toFixed(0)} MiB in ${files.length} files`);
  console.log(
    `independent: S3 served ${gib(independent.s3Bytes)} GiB, all ready in ${independent.seconds.toFixed(1)} s`,
  );
  const line = (name: string, r: { s3Bytes: number; seconds: number }) =>
    console.log(
      `${name} S3 served ${gib(r.s3Bytes)} GiB, all ready in ${r.seconds.toFixed(1)} s: S3 egress ratio ${(r.s3Bytes / independent.s3Bytes).toFixed(2)} (ideal 1/${N} = ${(1 / N).toFixed(2)}), time ratio ${(r.seconds / independent.seconds).toFixed(2)}`,
    );
  line("first, then the rest with peers:", peers);
  line("all at once with peers:         ", together);
} finally {
  for (const d of running) d.child.kill("SIGKILL");
  await proxy.close();
  await rgw.stop();
  await rm(work, { recursive: true, force: true });
}
