/**
 * The README's first command: the whole product on an embedded default, on one machine.
 *
 * 1. Starts a local S3-compatible server (s3rver: light, enough for a demo; the tests use Ceph RGW)
 *    and seeds it with a generated 4-shard safetensors model.
 * 2. `coldstart pull`: stages it into a directory with live progress and a summary.
 * 3. `coldstart doctor`: what this node can do (GPUs, GDS, where the staging root lives, the loader).
 * 4. `coldstart daemon`: starts the node daemon, prefetches the model through the HTTP API (bearer
 *    token), runs `coldstart wait` over the unix socket as an init container would, shows the env
 *    file, the model's status and a few metrics, then stops the daemon with SIGTERM.
 * Every staged file is checked byte for byte (SHA-256) against the source.
 */
import { readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import S3rver from "s3rver";
import { callDaemon } from "../src/api/client.js";
import { coldstart, finish, startDaemonProcess } from "../test/support/processes.js";
import { freshBucket, putFiles, seedClient } from "../test/support/s3.js";
import { type SyntheticFile, sha256, syntheticModel } from "../test/support/synthetic-model.js";

// We know: the image ships Node 24 (see src/cli/bin.ts).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const root = resolve(import.meta.dirname, "..");
const work = join(root, ".demo");
const say = (s: string) => process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);

await rm(work, { recursive: true, force: true });
const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: join(work, "s3") });
const { address, port } = await server.run();
const s3 = {
  endpoint: `http://${address}:${port}`,
  accessKeyId: "S3RVER",
  secretAccessKey: "S3RVER",
  region: "us-east-1",
};

try {
  const files = syntheticModel({ shards: 4, shardBytes: 64 * 1024 * 1024 });
  const client = seedClient(s3);
  const bucket = await freshBucket(client, "demo");
  const source = `s3://${bucket}/demo-llama/`;
  say(`seeding ${source} on ${s3.endpoint}: ${files.length} files, 4 safetensors shards`);
  await putFiles(client, bucket, "demo-llama/", files, 4);
  client.destroy();

  const s3Flags = ["--endpoint", s3.endpoint, "--path-style"];
  const pulled = join(work, "pulled");
  say(`coldstart pull ${source} --dest ${pulled}`);
  const pull = await finish(
    coldstart(["pull", source, "--dest", pulled, ...s3Flags], s3, {}, { built: true, stdio: "inherit" }),
  );
  if (pull.code !== 0) throw new Error(`coldstart pull exited with ${pull.code}`);
  await verify(pulled, files);

  say(`coldstart doctor --root ${join(work, "root")}: GPUs, GDS and staging placement on this machine`);
  const doctor = await finish(
    coldstart(["doctor", "--root", join(work, "root")], s3, {}, { built: true, stdio: "inherit" }),
  );
  if (doctor.code !== 0) throw new Error(`coldstart doctor exited with ${doctor.code}`);

  say("coldstart daemon (token auth on 127.0.0.1, handshake socket, metrics listener)");
  const token = "demo-token";
  const tokenFile = join(work, "tokens");
  await writeFile(tokenFile, `${token}\n`);
  const socket = join(work, "run", "coldstart.sock");
  const daemon = await startDaemonProcess(
    [
      "--root",
      join(work, "root"),
      "--socket",
      socket,
      "--token-file",
      tokenFile,
      "--allow-source",
      `s3://${bucket}/**`,
      ...s3Flags,
    ],
    s3,
    {},
    { built: true },
  );
  process.stdout.write(`API ${daemon.api}, metrics ${daemon.metrics}, socket ${socket}\n`);
  const api = { url: daemon.api, token };

  say("an operator prefetches the model: PUT /v1/models/demo%2Fllama");
  const put = await callDaemon(api, "PUT", "/v1/models/demo%2Fllama", { source });
  process.stdout.write(`HTTP ${put.status} ${JSON.stringify(put.body)}\n`);

  say("an init container waits for it: coldstart wait demo/llama --socket … --env-file …");
  const envFile = join(work, "env");
  const wait = await finish(
    coldstart(
      ["wait", "demo/llama", "--socket", socket, "--source", source, "--env-file", envFile],
      s3,
      {},
      { built: true, stdio: "inherit" },
    ),
  );
  if (wait.code !== 0) throw new Error(`coldstart wait exited with ${wait.code}`);
  process.stdout.write(`env file ${envFile}:\n${await readFile(envFile, "utf8")}`);
  const status = (await callDaemon(api, "GET", "/v1/models/demo%2Fllama")).body as { path: string };
  process.stdout.write(`status: ${JSON.stringify(status)}\n`);
  await verify(status.path, files);

  say("a few metrics (GET /metrics on the metrics listener)");
  const metrics = await fetch(`${daemon.metrics}/metrics`).then((r) => r.text());
  const shown =
    /^coldstart_(models\{state="ready"\}|download_bytes_total|s3_requests_total|handshake_waits_total\{outcome="ready"\}|gds_info|placement_info|native_addon_available)/;
  process.stdout.write(
    `${metrics
      .split("\n")
      .filter((l) => shown.test(l))
      .join("\n")}\n`,
  );

  say("SIGTERM: the daemon drains and exits");
  daemon.child.kill("SIGTERM");
  const exit = await daemon.exited;
  process.stdout.write(`daemon exited with ${exit.code}; its JSON logs: ${daemon.logs.length} lines\n`);
  say("done: pull, daemon, API prefetch and the init-container handshake, all verified");
} finally {
  await server.close();
}

async function verify(dir: string, files: SyntheticFile[]): Promise<void> {
  for (const f of files) {
    const got = sha256(await readFile(join(dir, f.relPath)));
    if (got !== f.sha256) throw new Error(`${f.relPath}: staged sha256 ${got} != source ${f.sha256}`);
  }
  process.stdout.write(
    `verified: all ${files.length} files in ${dir} match the source byte for byte (SHA-256)\n`,
  );
}
