import { readdir } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { finish, jsonLines, coldstart as spawnColdstart } from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const MiB = 1024 * 1024;
const fx = useS3Fixture("cs-cli-");
const { s3 } = fx;
const coldstart = (args: string[], env: Record<string, string> = {}) => spawnColdstart(args, s3, env);

const lastJson = (out: string) => JSON.parse(out.trim().split("\n").at(-1) ?? "null");

describe("coldstart pull", () => {
  it("stages a model, exits 0 and ends --json output with the summary", async () => {
    const files = syntheticModel({ shards: 3, shardBytes: 2 * MiB });
    const bucket = await freshBucket(fx.client);
    await putFiles(fx.client, bucket, "m/", files);
    const dest = join(fx.work, "dest");

    const out = await finish(
      coldstart([`pull`, `s3://${bucket}/m`, "--dest", dest, "--path-style", "--json"], {
        AWS_ENDPOINT_URL: s3.endpoint,
      }),
    );

    expect(out.stderr).toBe("");
    expect(out.code).toBe(0);
    const summary = lastJson(out.stdout);
    expect(Object.keys(summary).sort()).toEqual(
      ["bytes", "bytesPerSecond", "files", "resumedBytes", "retries", "seconds"].sort(),
    );
    expect(summary.files).toBe(files.length);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
  });

  it("exits 2 with CS_CONFIG_INVALID naming the option and value for a bad flag", async () => {
    const out = await finish(coldstart(["pull", "s3://b/p/", "--dest", fx.work, "--part-size", "1KiB"]));
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(
      /^coldstart: CS_CONFIG_INVALID: download\.partSizeBytes \(from flag --part-size\).*"1KiB"/,
    );
    expect(out.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("exits 2 with CS_CONFIG_INVALID for a misspelled COLDSTART_ variable", async () => {
    const out = await finish(
      coldstart(["pull", "s3://b/p/", "--dest", fx.work], { COLDSTART_CONCURENCY: "4" }),
    );
    expect(out.code).toBe(2);
    expect(out.stderr).toContain("CS_CONFIG_INVALID");
    expect(out.stderr).toContain("COLDSTART_CONCURENCY");
  });

  it("exits 2 with CS_SOURCE_URI_INVALID for a source that is not s3://", async () => {
    const out = await finish(coldstart(["pull", "https://b/p/", "--dest", fx.work]));
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/^coldstart: CS_SOURCE_URI_INVALID: /);
  });

  it("exits 1 with one stderr line naming the code, the key and the reason", async () => {
    const bucket = await freshBucket(fx.client);
    await putFiles(fx.client, bucket, "m/", syntheticModel({ shards: 1, shardBytes: 64 * 1024 }));
    fx.proxy.addRule({
      // Not a substring: "config.json" is also in generation_config.json, and which of the two
      // fails first is a race.
      match: { method: "GET", path: /\/config\.json$/ },
      action: { kind: "status", status: 403, code: "AccessDenied" },
    });
    const out = await finish(
      coldstart([
        "pull",
        `s3://${bucket}/m/`,
        "--dest",
        join(fx.work, "d"),
        "--path-style",
        "--endpoint",
        fx.proxy.url,
      ]),
    );
    expect(out.code).toBe(1);
    expect(out.stderr.trim().split("\n")).toHaveLength(1);
    expect(out.stderr).toMatch(/^coldstart: CS_S3_ACCESS_DENIED key="m\/config.json": .*access denied/);
  });

  it("a listing answered 200 with a body that is not XML: exit 1, exactly one stderr line", async () => {
    // Regression: the SDK's parse error carries a second line ("Deserialization error: to see the raw
    // response, …"), which went to stderr as is. The spawned CLI gets no
    // AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED, so on Node 20 this also pins that the SDK's
    // version warning stays off stderr.
    const server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("hello");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const fake = { endpoint: `http://127.0.0.1:${port}`, accessKeyId: "AKIDFAKE", secretAccessKey: "fake" };
      const out = await finish(
        spawnColdstart(
          [
            "pull",
            "s3://bucket/m/",
            "--dest",
            join(fx.work, "d"),
            "--path-style",
            "--endpoint",
            fake.endpoint,
          ],
          { ...fake, region: "us-east-1" },
        ),
      );
      expect(out.code).toBe(1);
      expect(out.stderr).toMatch(/^coldstart: CS_S3_REQUEST_FAILED key="s3:\/\/bucket\/m\/": [^\n]+\n$/);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("after SIGKILL at ~50%, a restart fetches only the missing parts", async () => {
    const files = syntheticModel({ shards: 4, shardBytes: 8 * MiB });
    const total = files.reduce((n, f) => n + f.body.length, 0);
    const bucket = await freshBucket(fx.client);
    await putFiles(fx.client, bucket, "m/", files);
    const dest = join(fx.work, "dest");
    const concurrency = 4;
    const partSize = MiB;
    // 36 ranged GETs (9 per shard, the last a few header bytes): the first 26 (at least 22 MiB) come
    // through, every later one waits at the proxy until after the kill, so the kill always lands
    // mid-job, past half of it, however fast or slow the machine is. At most two shards are complete
    // then, so at least 7 MiB is journaled but not committed: more than a broken resume could hide
    // under the bound below. The small files are whole GETs.
    const held = gate();
    fx.proxy.addRule({
      match: { method: "GET", hasRange: true },
      skip: 26,
      action: { kind: "hook", fn: () => held.opened },
    });
    const args = [
      "pull",
      `s3://${bucket}/m/`,
      "--dest",
      dest,
      "--path-style",
      "--endpoint",
      fx.proxy.url,
      "--json",
      "--concurrency",
      String(concurrency),
      "--part-size",
      "1MiB",
      "--progress-interval-ms",
      "100",
      // Killed with both worker threads holding parts: a part is journaled only once its thread
      // has made it durable, so the bound below holds across threads.
      "--workers",
      "2",
    ];

    const first = coldstart(args);
    const printed = jsonLines(first);
    const exited = finish(first);
    let killedAt: number;
    try {
      killedAt = await waitFor(
        () => {
          if (first.exitCode !== null) throw new Error(`pull exited ${first.exitCode} before the kill`);
          const p = printed().find((l) => l.event === "progress" && Number(l.bytesDone) >= total / 2);
          return p ? Number(p.bytesDone) : 0;
        },
        { what: "progress past half of the model" },
      );
    } finally {
      first.kill("SIGKILL");
    }
    const killed = await exited;
    expect(killed.signal).toBe("SIGKILL");
    expect(killedAt).toBeGreaterThan(0);
    // Object bytes only: listings are GETs too.
    const objectBytes = () =>
      [...fx.proxy.bytesServed().byPath].reduce(
        (n, [path, b]) => (path.startsWith(`/${bucket}/m/`) ? n + b : n),
        0,
      );
    const servedBeforeKill = objectBytes();
    expect(servedBeforeKill).toBeLessThan(total);
    fx.proxy.resetStats();
    fx.proxy.clearRules();
    held.open();

    const second = await finish(coldstart(args));
    expect(second.code, second.stderr).toBe(0);
    const summary = lastJson(second.stdout);
    const servedAfter = objectBytes();
    const refetched = servedBeforeKill + servedAfter - total;
    // Only parts in flight at the kill are fetched twice: at most concurrency × part size.
    expect(refetched).toBeLessThanOrEqual(concurrency * partSize);
    expect(summary.resumedBytes).toBeGreaterThan(0);
    expect(summary.resumedBytes + servedAfter).toBe(total);
    expect(await digests(dest, files)).toEqual(expectedDigests(files));
    expect(await readdir(join(dest, ".coldstart", "tmp"))).toEqual([]);
  });
});
