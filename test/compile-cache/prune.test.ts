/**
 * `cache prune`'s plan on the test's clock: the upload grace and the retention are durations, so
 * each boundary is checked by moving `now` past it from the objects' own timestamps in the real S3
 * server, never by waiting for it. (share.test.ts runs the command itself.)
 */
import { randomUUID } from "node:crypto";
import { CreateMultipartUploadCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { describe, expect, it } from "vitest";
import { planPrune } from "../../src/compile-cache/prune.js";
import {
  compileCacheClient,
  MANIFEST_FORMAT,
  type Manifest,
  RemoteStore,
} from "../../src/compile-cache/remote.js";
import { loadConfig } from "../../src/config/load.js";
import { parseS3Uri } from "../../src/s3/uri.js";
import { freshBucket } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-cc-prune-");
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

function manifestOf(key: string, pack: string): Manifest {
  return {
    format: MANIFEST_FORMAT,
    key,
    canonical: "coldstart-compile-cache-key/v1\nvllm=0.11.0",
    createdAt: new Date().toISOString(),
    publisher: { version: "test" },
    pack: { name: pack, bytes: 0, sha256: EMPTY_SHA },
    bytes: 0,
    files: [],
  };
}

describe("cache prune's plan", () => {
  it("leaves leftovers younger than the upload grace and caches younger than the retention, takes them once older", async () => {
    process.env.AWS_ACCESS_KEY_ID = fx.s3.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = fx.s3.secretAccessKey;
    const bucket = await freshBucket(fx.client, "ccprune");
    const config = loadConfig({
      env: {
        COLDSTART_S3_ENDPOINT: fx.s3.endpoint,
        COLDSTART_S3_PATH_STYLE: "true",
        COLDSTART_S3_REGION: fx.s3.region,
      },
    });
    const client = compileCacheClient(config);
    try {
      const store = new RemoteStore(client, parseS3Uri(`s3://${bucket}/cc/`));
      const put = (Key: string, Body = "") =>
        fx.client.send(new PutObjectCommand({ Bucket: bucket, Key, Body }));
      // k1: a published cache, and the pack of a publisher that lost the race to it.
      const named = `packs/${randomUUID()}.tar.gz`;
      const lost = `packs/${randomUUID()}.tar.gz`;
      await put(`cc/k1/${named}`);
      await put(`cc/k1/${lost}`);
      await put("cc/k1/manifest.json", JSON.stringify(manifestOf("k1", named)));
      // k2: a publisher killed between its pack and its manifest; k3: one killed mid-upload.
      const orphan = `packs/${randomUUID()}.tar.gz`;
      await put(`cc/k2/${orphan}`);
      await fx.client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `cc/k3/${named}` }));

      // The clock is set from the store's own timestamps, however long the setup took.
      const times: number[] = [];
      for await (const o of store.objects()) times.push(o.lastModified);
      for (const u of await store.unfinishedUploads()) times.push(u.initiated);
      const [earliest, latest] = [Math.min(...times), Math.max(...times)];
      const plan = (now: number) =>
        planPrune(store, { retentionMs: 30 * DAY, uploadGraceMs: 6 * HOUR, now }).then((p) =>
          p.actions.map((a) => `${a.kind} ${a.objects.join(" ")}`).sort(),
        );

      // Within the grace a publish may still be under way: nothing is touched, even the oldest.
      expect(await plan(earliest + 6 * HOUR)).toEqual([]);
      // Past it: the loser's pack, the orphan and the unfinished upload; the manifest's pack stays.
      expect(await plan(latest + 6 * HOUR + 1000)).toEqual([
        `orphan-pack cc/k1/${lost}`,
        `orphan-pack cc/k2/${orphan}`,
        `unfinished-upload cc/k3/${named}`,
      ]);
      // Past the retention with no hit: the whole cache, its manifest first.
      const expired = await planPrune(store, {
        retentionMs: 30 * DAY,
        uploadGraceMs: 6 * HOUR,
        now: latest + 31 * DAY,
      });
      expect(expired.actions.find((a) => a.kind === "expired")).toMatchObject({
        cacheKey: "k1",
        objects: [
          "cc/k1/manifest.json",
          expect.stringContaining("cc/k1/packs/"),
          expect.stringContaining("cc/k1/packs/"),
        ],
      });
      expect(expired.kept).toEqual([]);
    } finally {
      client.destroy();
    }
  });
});
