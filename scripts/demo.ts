/**
 * The README's first command: starts a local S3-compatible server (s3rver, light and enough for a
 * demo; the tests use Ceph RGW), seeds it with a generated 4-shard safetensors model, stages it with
 * `coldstart pull`, and checks every staged file's SHA-256 against the source.
 */
import { spawn } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import S3rver from "s3rver";
import { freshBucket, putFiles, seedClient } from "../test/support/s3.js";
import { sha256, syntheticModel } from "../test/support/synthetic-model.js";

// We know: the image ships Node 24 (see src/cli/bin.ts).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
const root = resolve(import.meta.dirname, "..");
const work = join(root, ".demo");
const dest = join(work, "models", "demo-llama");

await rm(work, { recursive: true, force: true });
const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: join(work, "s3") });
const { address, port } = (await server.run()) as { address: string; port: number };
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
  process.stdout.write(`seeding ${s3.endpoint}/${bucket}/demo-llama/ with ${files.length} files...\n`);
  await putFiles(client, bucket, "demo-llama/", files, 4);
  client.destroy();

  const args = [
    "pull",
    `s3://${bucket}/demo-llama/`,
    "--dest",
    dest,
    "--endpoint",
    s3.endpoint,
    "--path-style",
  ];
  process.stdout.write(`$ coldstart ${args.join(" ")}\n`);
  const code = await new Promise<number>((done) => {
    const child = spawn(process.execPath, [join(root, "bin", "coldstart.js"), ...args], {
      stdio: "inherit",
      env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
    child.on("exit", (c) => done(c ?? 1));
  });
  if (code !== 0) throw new Error(`coldstart pull exited with ${code}`);

  for (const f of files) {
    const got = sha256(await readFile(join(dest, f.relPath)));
    if (got !== f.sha256) throw new Error(`${f.relPath}: staged sha256 ${got} != source ${f.sha256}`);
  }
  process.stdout.write(
    `verified: all ${files.length} staged files match the source byte for byte (SHA-256)\n`,
  );
  process.stdout.write(`staged model: ${dest}\n`);
} finally {
  await server.close();
}
