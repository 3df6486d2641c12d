// Regressions (issue 15, defect 8): files refused by validation left their bytes in
// DEST/.coldstart/tmp, and jobs that failed before downloading left full-length sparse `.partial` and
// `.journal` files. What can never be resumed is reclaimed; a header nested 100,000 deep is
// CS_SAFETENSORS_INVALID, not CS_IO_ERROR "Maximum call stack size exceeded".
import { randomBytes } from "node:crypto";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readSafetensorsHeader } from "../../src/safetensors/header.js";
import { expectRejection } from "../support/expect-error.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { listTree, stage } from "../support/stage.js";
import { file, syntheticModel } from "../support/synthetic-model.js";
import { tmpfs, umount } from "../support/tmpfs.js";

const fx = useS3Fixture("cs-reclaim-");
const MiB = 1024 * 1024;

/** A .safetensors file's bytes: the 8-byte length, the header text, the data. */
function safetensorsBytes(header: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  return Buffer.concat([len, Buffer.from(header), data]);
}

/** A .safetensors file whose header names a dtype that does not exist: refused after download. */
function badShard(bytes: number): Buffer {
  const header = JSON.stringify({ w: { dtype: "F17", shape: [bytes / 2], data_offsets: [0, bytes] } });
  return safetensorsBytes(header, randomBytes(bytes));
}

/** Reads the header of a file holding `header` (as the staging engine does after a download). */
async function checkHeader(name: string, header: string) {
  await mkdir(fx.work, { recursive: true });
  const path = join(fx.work, name);
  await writeFile(path, safetensorsBytes(header));
  return expectRejection(readSafetensorsHeader(path, `m/${name}`), "CS_SAFETENSORS_INVALID");
}

describe("nothing that can never be resumed is left in .coldstart/tmp", () => {
  it.each([
    ["in one part", 64 * 1024],
    ["in several parts", 3 * MiB],
  ])("a file refused by validation (%s) leaves no temp file or journal", async (_what, bytes) => {
    const bucket = await freshBucket(fx.client, "rc");
    await putFiles(fx.client, bucket, "m/", [file("bad.safetensors", badShard(bytes))]);
    const dest = join(fx.work, "d");
    await expectRejection(
      stage(fx.s3, { bucket, prefix: "m/", dest, partSizeBytes: MiB }),
      "CS_SAFETENSORS_INVALID",
    );
    expect(await listTree(dest)).toEqual([]);
    expect(await readdir(join(dest, ".coldstart", "tmp"))).toEqual([]);
  });

  it("a job refused for space before downloading leaves no sparse temp files or empty journals", async () => {
    const mnt = await tmpfs(fx.work, 4 * MiB);
    try {
      const bucket = await freshBucket(fx.client, "rc");
      await putFiles(fx.client, bucket, "m/", syntheticModel({ shards: 2, shardBytes: 3 * MiB }));
      const dest = join(mnt, "d");
      await expectRejection(
        stage(fx.s3, { bucket, prefix: "m/", dest, partSizeBytes: MiB }),
        "CS_INSUFFICIENT_SPACE",
      );
      expect(await readdir(join(dest, ".coldstart", "tmp"))).toEqual([]);
    } finally {
      umount(mnt);
    }
  });
});

describe("safetensors header limits", () => {
  // Regression (review of issue 15): the nesting scan ran before JSON.parse, and its string pattern
  // is quadratic on a string that never closes; 1 MB of `\"` took minutes on the event loop.
  it("a header with an unclosed string is refused as invalid JSON (the test's timeout is the bound)", async () => {
    const err = await checkHeader("unclosed.safetensors", `{"${'\\"'.repeat(500_000)}`);
    expect(err.message).toMatch(/header is not valid JSON/);
  });

  it("a header nested 100,000 deep is CS_SAFETENSORS_INVALID naming the depth", async () => {
    const depth = 100_000;
    const shape = `${"[".repeat(depth)}${"]".repeat(depth)}`;
    const err = await checkHeader(
      "deep.safetensors",
      `{"w":{"dtype":"F16","shape":${shape},"data_offsets":[0,0]}}`,
    );
    expect(err.message).toMatch(/nests more than 8 levels/);
    expect(err.details.key).toBe("m/deep.safetensors");
  });
});
