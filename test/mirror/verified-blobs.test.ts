/**
 * Verdicts on local blobs (src/mirror/verified-blobs.ts): what lets the mirror serve a range, which
 * cannot be checked against a digest by itself, only of a blob whose whole bytes were checked.
 */
import { createHash } from "node:crypto";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Blob } from "../../src/mirror/content-store.js";
import { VerifiedBlobs } from "../../src/mirror/verified-blobs.js";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

let work: string;
const handles: Blob[] = [];
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-verified-"));
});
afterEach(async () => {
  for (const b of handles.splice(0)) await b.fh.close().catch(() => {});
  await rm(work, { recursive: true, force: true });
});

/** A blob as ContentStore.open gives it, with a stamp the test chooses (a file "not changed"). */
async function blob(bytes: Buffer, size = bytes.length, stamp = "s1"): Promise<Blob> {
  const path = join(work, "blob");
  await writeFile(path, bytes);
  const b = { fh: await open(path), size, path, stamp };
  handles.push(b);
  return b;
}

describe("VerifiedBlobs", () => {
  it("reads a blob whole once, keeps the verdict for that file while it holds, then reads again", async () => {
    let now = 0;
    const v = new VerifiedBlobs({ ttlMs: 1000, now: () => now });
    const good = Buffer.alloc(3 * 1024 * 1024 + 7, 1);
    const digest = digestOf(good);
    const mismatches: string[] = [];
    expect(await v.verify(digest, await blob(good), (w) => mismatches.push(w))).toEqual({ ok: true });

    // The bytes rot in place and the stamp says nothing changed: the verdict stands until it expires.
    const rotted = Buffer.from(good);
    rotted[12345] = 2;
    const same = await blob(rotted);
    expect(await v.verify(digest, same, (w) => mismatches.push(w))).toEqual({ ok: true });
    now = 1000;
    expect(await v.verify(digest, same, (w) => mismatches.push(w))).toMatchObject({ ok: false });
    expect(mismatches).toHaveLength(1);
    // Bad is remembered too, and told once.
    expect(v.get(digest, "s1")).toMatchObject({ ok: false });
    expect(await v.verify(digest, same, (w) => mismatches.push(w))).toMatchObject({ ok: false });
    expect(mismatches).toHaveLength(1);
    // Another file (a new stamp) has no verdict yet.
    expect(v.get(digest, "s2")).toBeUndefined();
  });

  it("shares one read among callers asking at once; the mismatch is told once", async () => {
    const v = new VerifiedBlobs();
    const digest = digestOf(Buffer.alloc(100_000, 1));
    const b = await blob(Buffer.alloc(100_000, 2));
    const told: string[] = [];
    const verdicts = await Promise.all([1, 2, 3].map(() => v.verify(digest, b, (w) => told.push(w))));
    expect(verdicts.map((x) => x.ok)).toEqual([false, false, false]);
    expect(told).toHaveLength(1);
    expect(told[0]).toMatch(/got 100000 bytes with sha256:[0-9a-f]{64}, expected 100000 bytes of sha256:/);
  });

  it("a file longer or shorter than its size is not the blob, even with the right prefix", async () => {
    const bytes = Buffer.from("the blob");
    const v = new VerifiedBlobs();
    const longer = await blob(Buffer.concat([bytes, Buffer.from("!")]), bytes.length, "long");
    expect(await v.verify(digestOf(bytes), longer, () => {})).toMatchObject({ ok: false });
    const shorter = await blob(bytes.subarray(0, 4), bytes.length, "short");
    expect(await v.verify(digestOf(bytes), shorter, () => {})).toMatchObject({ ok: false });
  });

  it("keeps at most maxEntries verdicts, forgetting the oldest", () => {
    const v = new VerifiedBlobs({ maxEntries: 2 });
    v.set("sha256:a", "s", { ok: true });
    v.set("sha256:b", "s", { ok: true });
    v.set("sha256:c", "s", { ok: true });
    expect([v.get("sha256:a", "s"), v.get("sha256:b", "s"), v.get("sha256:c", "s")]).toEqual([
      undefined,
      { ok: true },
      { ok: true },
    ]);
  });
});
