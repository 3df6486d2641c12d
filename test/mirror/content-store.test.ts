/**
 * ContentStore.open, the one way the mirror and the peer blob route read containerd's content
 * store: a blob by digest, never through a symlink at any component (defect 5).
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ContentStore } from "../../src/mirror/content-store.js";

const bytes = Buffer.from("a layer's bytes");
const hex = createHash("sha256").update(bytes).digest("hex");
const digest = `sha256:${hex}`;

let work: string;
let content: string;
let outside: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-content-store-"));
  content = join(work, "content");
  outside = join(work, "outside");
  // Outside the store, the very bytes asked for: only the guard keeps them from being served.
  await mkdir(join(outside, "blobs", "sha256"), { recursive: true });
  await writeFile(join(outside, "blobs", "sha256", hex), bytes);
  await mkdir(content);
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("ContentStore.open", () => {
  it("opens a blob by digest; undefined for one it does not hold or a digest it does not serve", async () => {
    await mkdir(join(content, "blobs", "sha256"), { recursive: true });
    await writeFile(join(content, "blobs", "sha256", hex), bytes);
    const store = new ContentStore(content);
    const blob = await store.open(digest);
    expect(blob?.size).toBe(bytes.length);
    expect(blob?.path).toBe(join(content, "blobs", "sha256", hex));
    expect(await blob?.fh.readFile()).toEqual(bytes);
    await blob?.fh.close();
    expect(await store.open(`sha256:${"0".repeat(64)}`)).toBeUndefined();
    expect(await store.open(`sha512:${"0".repeat(128)}`)).toBeUndefined();
    expect(await store.open("sha256:../../etc/passwd")).toBeUndefined();
  });

  it("regression: a symlink at blobs, at sha256 or at the blob throws CS_PATH_UNSAFE, never opening outside", async () => {
    const store = new ContentStore(content);
    await symlink(join(outside, "blobs"), join(content, "blobs"));
    await expect(store.open(digest)).rejects.toMatchObject({ code: "CS_PATH_UNSAFE" });

    await rm(join(content, "blobs"));
    await mkdir(join(content, "blobs"));
    await symlink(join(outside, "blobs", "sha256"), join(content, "blobs", "sha256"));
    await expect(store.open(digest)).rejects.toMatchObject({ code: "CS_PATH_UNSAFE" });

    await rm(join(content, "blobs", "sha256"));
    await mkdir(join(content, "blobs", "sha256"));
    await symlink(join(outside, "blobs", "sha256", hex), join(content, "blobs", "sha256", hex));
    await expect(store.open(digest)).rejects.toMatchObject({ code: "CS_PATH_UNSAFE" });

    // Not a regular file where the blob should be.
    await rm(join(content, "blobs", "sha256", hex));
    await mkdir(join(content, "blobs", "sha256", hex));
    await expect(store.open(digest)).rejects.toMatchObject({ code: "CS_PATH_UNSAFE" });
  });

  it("trusts the configured directory itself, which may be a symlink an operator made", async () => {
    await mkdir(join(content, "blobs", "sha256"), { recursive: true });
    await writeFile(join(content, "blobs", "sha256", hex), bytes);
    await symlink(content, join(work, "link"));
    const blob = await new ContentStore(join(work, "link")).open(digest);
    expect(blob?.size).toBe(bytes.length);
    await blob?.fh.close();
  });
});
