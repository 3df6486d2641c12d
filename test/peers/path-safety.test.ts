// Regression (issue 15, defect 4): replacing a model's directory under the root with a symlink to a
// directory outside it made `GET /v1/peer/piece` answer 200 with the outside file's bytes
// (`O_NOFOLLOW` guarded only the last path component). Nothing outside the staging root may be read
// for any request: a symlink at any depth is refused with 403 CS_PATH_UNSAFE.
import { randomFillSync } from "node:crypto";
import { cp, lstat, mkdir, readdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { HeadObjectCommand } from "@aws-sdk/client-s3";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { loadConfig } from "../../src/config/load.js";
import type { ModelManager } from "../../src/models/model-manager.js";
import type { S3ObjectSource } from "../../src/s3/s3-object-source.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { testManager } from "../support/manager.js";
import { freshBucket, putFiles, testSource } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { file } from "../support/synthetic-model.js";
import { waitFor } from "../support/wait.js";

const fx = useS3Fixture("cs-pathsafe-");
const MiB = 1024 * 1024;

interface Harness {
  root: string;
  manager: ModelManager;
  app: ReturnType<typeof buildApp>;
  source: S3ObjectSource;
  /** What the daemon logged at warn and above. */
  logs: Record<string, unknown>[];
}
let h: Harness;

beforeEach(async () => {
  const root = join(fx.work, "root");
  await mkdir(root, { recursive: true });
  const config = loadConfig({
    env: { COLDSTART_ROOT: root, COLDSTART_SOURCES_ALLOW: "s3://ps-*/**", COLDSTART_PART_SIZE: "1MiB" },
  });
  const source = testSource(fx.s3, { endpoint: fx.proxy.url });
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: "warn" }, { write: (line: string) => logs.push(JSON.parse(line)) });
  const manager = await testManager({
    root,
    source,
    scheduler: new SlotScheduler(4),
    config,
    logger,
  });
  await manager.start();
  const app = buildApp(
    { manager, logger, tokens: undefined, bodyLimitBytes: 4096, isReady: () => true },
    "tcp",
  );
  h = { root, manager, app, source, logs };
});

afterEach(async () => {
  await h.manager.drain(0);
  await h.app.close();
  h.source.close();
});

/** A 3 MiB object in 1 MiB pieces, at a nested key, staged as model `org/m`. */
async function stageModel() {
  const bucket = await freshBucket(fx.client, "ps");
  const body = randomFillSync(Buffer.alloc(3 * MiB));
  await putFiles(fx.client, bucket, "m/", [file("sub/w.bin", body)]);
  const put = await h.app.inject({
    method: "PUT",
    url: "/v1/models/org%2Fm",
    payload: { source: `s3://${bucket}/m/` },
  });
  expect(put.statusCode).toBe(202);
  const ready = await h.app.inject({ url: "/v1/models/org%2Fm/ready?timeoutSeconds=60" });
  expect(ready.statusCode).toBe(200);
  const object = await h.app.inject({ url: `/v1/peer/object?bucket=${bucket}&key=m/sub/w.bin&etag=x` });
  expect(object.statusCode).toBe(404); // the ETag is checked
  const { ETag } = await fx.client.send(new HeadObjectCommand({ Bucket: bucket, Key: "m/sub/w.bin" }));
  const q = `bucket=${bucket}&key=${encodeURIComponent("m/sub/w.bin")}&etag=${encodeURIComponent(ETag ?? "")}`;
  return { body, q };
}

/**
 * Copies `path` to `outside` with other bytes (every w.bin filled with "X", every manifest's piece
 * digests zeroed), moves the real one aside and plants a symlink to the copy in its place.
 */
async function plantAt(path: string, outside: string): Promise<() => Promise<void>> {
  await cp(path, outside, { recursive: true });
  for (const f of [...(await findFiles(outside, "w.bin")), ...(await findFiles(outside, ".partial"))])
    await writeFile(f, Buffer.alloc(3 * MiB, "X"));
  for (const f of await findFiles(outside, "manifest.jsonl")) {
    await writeFile(f, (await readFile(f, "utf8")).replace(/[0-9a-f]{64}/g, "0".repeat(64)));
  }
  const aside = `${path}.real`;
  await rename(path, aside);
  await symlink(outside, path);
  return async () => {
    await rm(path);
    await rename(aside, path);
  };
}

async function findFiles(at: string, name: string): Promise<string[]> {
  const st = await lstat(at);
  if (st.isFile()) return at.endsWith(name) ? [at] : [];
  if (!st.isDirectory()) return [];
  const out: string[] = [];
  for (const e of await readdir(at)) out.push(...(await findFiles(join(at, e), name)));
  return out;
}

describe("peer routes never read outside the staging root", () => {
  it("refuses a symlink at every depth of a ready model with 403 CS_PATH_UNSAFE, and serves again once it is gone", async () => {
    const { body, q } = await stageModel();
    const piece = () => h.app.inject({ url: `/v1/peer/piece?${q}&piece=1` });
    const ok = await piece();
    expect(ok.statusCode).toBe(200);
    expect(ok.rawPayload.equals(body.subarray(MiB, 2 * MiB))).toBe(true);

    const model = join(h.root, "models", "org", "m");
    const description = (await h.app.inject({ url: `/v1/peer/object?${q}` })).json();
    const depths: [string, string][] = [
      ["models/", join(h.root, "models")],
      ["models/org/", join(h.root, "models", "org")],
      ["models/org/m/ (the model)", model],
      ["models/org/m/sub/", join(model, "sub")],
      ["the file", join(model, "sub", "w.bin")],
      ["models/org/m/.coldstart/ (the manifest's directory)", join(model, ".coldstart")],
      ["the manifest", join(model, ".coldstart", "manifest.jsonl")],
    ];
    for (const [i, [where, path]] of depths.entries()) {
      const restore = await plantAt(path, join(fx.work, `outside-${i}`));
      try {
        const res = await piece();
        if (res.statusCode === 200 && !res.rawPayload.equals(body.subarray(MiB, 2 * MiB))) {
          throw new Error(
            `${where}: served ${res.rawPayload.subarray(0, 8).toString()}… from outside the root`,
          );
        }
        // A symlink below the model is only met when a file is opened; one above it, when anything is.
        const touched = !where.startsWith("models/org/m/.coldstart") && where !== "the manifest";
        if (touched)
          expect({ where, status: res.statusCode, code: res.json().error?.code }).toEqual({
            where,
            status: 403,
            code: "CS_PATH_UNSAFE",
          });
        // A description answered from what this daemon read before is fine; one from the copy is not.
        const object = await h.app.inject({ url: `/v1/peer/object?${q}` });
        if (object.statusCode === 200) expect(object.json()).toEqual(description);
        else expect(object.json().error.code).toBe("CS_PATH_UNSAFE");
        // A daemon that has not read the manifest yet (a restart) must refuse to read it now.
        const coldConfig = loadConfig({ env: { COLDSTART_ROOT: h.root } });
        const cold = await testManager({
          root: h.root,
          source: h.source,
          scheduler: new SlotScheduler(1),
          config: coldConfig,
          logger: pino({ level: "silent" }),
        });
        const { bucket, key, etag } = Object.fromEntries(new URLSearchParams(q));
        const held = await cold.pieces.heldObject(bucket ?? "", key ?? "", etag ?? "").then(
          (f) => f?.pieces,
          (e: { code?: string }) => e.code,
        );
        if (where === "the file" || where === "models/org/m/sub/") expect(held).toEqual(description.pieces);
        else expect({ where, held }).toEqual({ where, held: "CS_PATH_UNSAFE" });
      } finally {
        await restore();
      }
    }
    // Every refusal is logged for the operator, with the path that crosses the link.
    const refusals = h.logs.filter((l) => l.code === "CS_PATH_UNSAFE");
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals.every((l) => String(l.path).startsWith(h.root))).toBe(true);
    const again = await piece();
    expect(again.statusCode).toBe(200);
    expect(again.rawPayload.equals(body.subarray(MiB, 2 * MiB))).toBe(true);
  });

  it("refuses a symlink above the temp file of a model still staging", async () => {
    const bucket = await freshBucket(fx.client, "ps");
    const body = randomFillSync(Buffer.alloc(3 * MiB));
    await putFiles(fx.client, bucket, "m/", [file("w.bin", body)]);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    // The last part waits at the proxy: the first two are in (journaled), the model still staging.
    fx.proxy.addRule({
      match: { predicate: (r) => r.headers.range === `bytes=${2 * MiB}-${3 * MiB - 1}` },
      action: { kind: "hook", fn: () => gate },
    });
    await h.app.inject({
      method: "PUT",
      url: "/v1/models/org%2Fs",
      payload: { source: `s3://${bucket}/m/` },
    });
    const { ETag } = await fx.client.send(new HeadObjectCommand({ Bucket: bucket, Key: "m/w.bin" }));
    const q = `bucket=${bucket}&key=m%2Fw.bin&etag=${encodeURIComponent(ETag ?? "")}`;
    await waitFor(
      async () => {
        const o = await h.app.inject({ url: `/v1/peer/object?${q}` });
        return o.statusCode === 200 && o.json().pieces[0] && o.json().pieces[1];
      },
      { timeoutMs: 60_000, what: "the first two parts to be in" },
    );
    const good = await h.app.inject({ url: `/v1/peer/piece?${q}&piece=0` });
    expect(good.rawPayload.equals(body.subarray(0, MiB))).toBe(true);
    const model = join(h.root, "models", "org", "s");
    try {
      for (const [i, path] of [join(model, ".coldstart", "tmp"), join(model, ".coldstart")].entries()) {
        const restore = await plantAt(path, join(fx.work, `staging-outside-${i}`));
        try {
          const res = await h.app.inject({ url: `/v1/peer/piece?${q}&piece=0` });
          expect({ path, status: res.statusCode, code: res.json().error?.code }).toEqual({
            path,
            status: 403,
            code: "CS_PATH_UNSAFE",
          });
        } finally {
          await restore();
        }
      }
    } finally {
      open();
    }
    const ready = await h.app.inject({ url: "/v1/models/org%2Fs/ready?timeoutSeconds=60" });
    expect(ready.statusCode).toBe(200);
  });

  it("refuses to stage a model through a symlink planted on the way to its directory", async () => {
    const bucket = await freshBucket(fx.client, "ps");
    await putFiles(fx.client, bucket, "m/", [file("w.bin", Buffer.alloc(1024, 1))]);
    const outside = join(fx.work, "outside-org");
    await mkdir(outside);
    await mkdir(join(h.root, "models"), { recursive: true });
    await symlink(outside, join(h.root, "models", "org"));
    await h.app.inject({
      method: "PUT",
      url: "/v1/models/org%2Fx",
      payload: { source: `s3://${bucket}/m/` },
    });
    const done = await h.app.inject({ url: "/v1/models/org%2Fx/ready?timeoutSeconds=60" });
    expect(done.statusCode).toBe(409);
    expect(done.json().error.cause).toMatchObject({ code: "CS_PATH_UNSAFE" });
    expect(await findFiles(outside, "w.bin")).toEqual([]);
  });
});
