import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import * as tar from "tar";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  type CacheFile,
  digestFiles,
  isNoise,
  listCacheDir,
  packStream,
  snapshotFiles,
  unpackVerified,
} from "../../src/compile-cache/pack.js";
import { expectRejection } from "../support/expect-error.js";
import { settles } from "../support/wait.js";
import { openFilesUnder, pseudoSource, waitFor } from "./harness.js";

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-pack-"));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

async function put(dir: string, rel: string, body: string | Buffer): Promise<void> {
  await mkdir(join(dir, rel, ".."), { recursive: true });
  await writeFile(join(dir, rel), body);
}

const sha = (b: string | Buffer) => createHash("sha256").update(b).digest("hex");

async function sourceDir(): Promise<{ dir: string; files: CacheFile[] }> {
  const dir = join(work, "src");
  await put(dir, "torch_compile_cache/abc/rank_0_0/inductor_cache/xy/cxy.py", "print(1)\n");
  await put(dir, "torch_compile_cache/abc/rank_0_0/triton_cache/k/k.cubin", Buffer.alloc(4096, 7));
  await put(dir, "torch_compile_cache/abc/rank_0_0/computation_graph.py", "graph\n");
  await put(dir, "torch_compile_cache/abc/rank_0_0/inductor_cache/xy/cxy.py.lock", "");
  await put(dir, "__pycache__/m.cpython-311.pyc", "bytecode");
  await put(dir, "triton/tmp.pid_1_2/partial.cubin", "partial");
  const listing = await listCacheDir(dir);
  return { dir, files: await digestFiles(dir, listing.files) };
}

/** The pack of `files` from `dir`, as a publish makes it. */
const packOf = (dir: string, files: CacheFile[]) =>
  packStream(
    dir,
    files.map((f) => f.path),
  );

/** A tar.gz made by hand, for entries the packer would never write. */
function rawTar(cwd: string, paths: string[], options: { preservePaths?: boolean } = {}): Readable {
  return Readable.from(tar.c({ cwd, gzip: true, portable: true, ...options }, paths), { objectMode: false });
}

describe("compile-cache packs", () => {
  it("lists artifacts without noise, packs them, and unpacks them byte for byte", async () => {
    const { dir, files } = await sourceDir();
    expect(files.map((f) => f.path)).toEqual([
      "torch_compile_cache/abc/rank_0_0/computation_graph.py",
      "torch_compile_cache/abc/rank_0_0/inductor_cache/xy/cxy.py",
      "torch_compile_cache/abc/rank_0_0/triton_cache/k/k.cubin",
    ]);
    expect(files[2]).toEqual({
      path: "torch_compile_cache/abc/rank_0_0/triton_cache/k/k.cubin",
      bytes: 4096,
      sha256: sha(Buffer.alloc(4096, 7)),
    });
    const dest = join(work, "dest");
    await mkdir(dest);
    await unpackVerified(packOf(dir, files), dest, files);
    const got = await listCacheDir(dest);
    expect(await digestFiles(dest, got.files)).toEqual(files);
    expect(await readdir(dest)).toEqual(["torch_compile_cache"]);
  });

  it("calls locks, temp files, Triton's in-progress directories and bytecode noise", () => {
    for (const p of [
      "a/b.lock",
      "x.tmp",
      "triton/tmp.pid_1_2/k.cubin",
      "__pycache__/m.pyc",
      "a/__pycache__/x",
    ])
      expect(isNoise(p), p).toBe(true);
    for (const p of ["a/b.py", "triton/abc/k.cubin", "tmp/x.py", "torch_compile_cache/h/rank_0_0/x.json"])
      expect(isNoise(p), p).toBe(false);
  });

  it("the fingerprint changes when a file is added or rewritten", async () => {
    const { dir } = await sourceDir();
    const before = (await listCacheDir(dir)).fingerprint;
    await put(dir, "new.py", "x");
    const added = (await listCacheDir(dir)).fingerprint;
    expect(added).not.toBe(before);
    await put(dir, "new.py", "xy");
    expect((await listCacheDir(dir)).fingerprint).not.toBe(added);
  });

  it("refuses a file the manifest does not list, a symlink, and a path with ..: nothing lands outside", async () => {
    const { dir, files } = await sourceDir();
    const expectRefused = async (body: Readable, list: CacheFile[], pattern: RegExp) => {
      const dest = await mkdtemp(join(work, "dest-"));
      const err = await expectRejection(unpackVerified(body, dest, list), "CS_CACHE_REMOTE_INVALID");
      expect(err.message).toMatch(pattern);
    };
    // An extra file.
    await expectRefused(
      packOf(dir, files),
      files.slice(1),
      /computation_graph.py", which is not in the manifest/,
    );
    // A symlink pointing out of the cache.
    const linky = join(work, "linky");
    await mkdir(linky);
    await symlink("/etc/passwd", join(linky, "passwd"));
    await expectRefused(rawTar(linky, ["passwd"]), [], /SymbolicLink "passwd"/);
    // A ../ path (written with preservePaths, as a hostile publisher would).
    const inner = join(work, "a", "b");
    await mkdir(inner, { recursive: true });
    await writeFile(join(work, "a", "escape.py"), "owned");
    await expectRefused(
      rawTar(inner, ["../escape.py"], { preservePaths: true }),
      [{ path: "escape.py", bytes: 5, sha256: sha("owned") }],
      /escape.py|\.\./,
    );
    expect(await readdir(work)).not.toContain("escape.py");
  });

  it("refuses a file whose bytes differ from the manifest, naming both digests", async () => {
    const { dir, files } = await sourceDir();
    const lying = files.map((f, i) => (i === 0 ? { ...f, sha256: sha("something else") } : f));
    const dest = join(work, "dest");
    await mkdir(dest);
    const err = await expectRejection(
      unpackVerified(packOf(dir, files), dest, lying),
      "CS_CACHE_REMOTE_INVALID",
    );
    expect(err.message).toContain(files[0]?.sha256);
    expect(err.message).toContain(sha("something else"));
    // A listed file missing from the pack.
    const dest2 = join(work, "dest2");
    await mkdir(dest2);
    const extra = [...files, { path: "missing.py", bytes: 1, sha256: sha("x") }];
    const err2 = await expectRejection(
      unpackVerified(packOf(dir, files), dest2, extra),
      "CS_CACHE_REMOTE_INVALID",
    );
    expect(err2.message).toContain("missing.py");
    expect(await readFile(join(dir, "__pycache__/m.cpython-311.pyc"), "utf8")).toBe("bytecode");
  });

  it("a file named @x travels as a file (tar would read it as an archive to splice in)", async () => {
    const dir = join(work, "at");
    await put(dir, "@x", "not an archive");
    const files = await digestFiles(dir, (await listCacheDir(dir)).files);
    const dest = join(work, "at-dest");
    await mkdir(dest);
    await unpackVerified(packOf(dir, files), dest, files);
    expect(await readFile(join(dest, "@x"), "utf8")).toBe("not an archive");
  });

  it("refuses an entry bigger than the manifest says before writing it (no decompression bomb)", async () => {
    const dir = join(work, "bomb");
    await put(dir, "big.bin", Buffer.alloc(1024 * 1024));
    const files = await digestFiles(dir, (await listCacheDir(dir)).files);
    const dest = join(work, "bomb-dest");
    await mkdir(dest);
    const small = files.map((f) => ({ ...f, bytes: 10 }));
    const err = await expectRejection(
      unpackVerified(packOf(dir, files), dest, small),
      "CS_CACHE_REMOTE_INVALID",
    );
    expect(err.message).toContain("big.bin is 1048576 bytes in the pack, 10 in the manifest");
    expect(await readdir(dest)).toEqual([]);
  });

  it("never lists through a symlink, and a snapshot refuses a directory swapped for one", async () => {
    const outside = join(work, "outside");
    await put(outside, "inductor/secret.py", "token");
    const dir = join(work, "cache");
    await put(dir, "inductor/secret.py", "mine");
    await put(dir, "real.py", "x");
    await symlink(join(outside, "inductor"), join(dir, "linked"));
    const listing = await listCacheDir(dir);
    expect(listing.files.map((f) => f.path)).toEqual(["inductor/secret.py", "real.py"]);
    // A keyed directory that is itself a link lists as empty.
    await symlink(outside, join(work, "link-to-outside"));
    expect((await listCacheDir(join(work, "link-to-outside"))).files).toEqual([]);
    // Between listing and packing the pod swaps inductor/ for a link to the outside.
    await rename(join(dir, "inductor"), join(dir, "was-inductor"));
    await symlink(join(outside, "inductor"), join(dir, "inductor"));
    const snap = join(work, "snap");
    const err = await expectRejection(snapshotFiles(dir, listing.files, snap), "CS_KEY_UNSAFE");
    expect(err.message).toContain("inductor/secret.py");
    // The link to the outside file was made, found foreign, and removed: nothing of it stays.
    expect((await listCacheDir(snap)).files).toEqual([]);
    await expect(stat(join(snap, "inductor", "secret.py"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  describe("regression: a damaged pack hung the unpack (and its restore) for ever", () => {
    /** Three sources a few deflate blocks each, packed, and what the manifest says of them. */
    async function compressiblePack(): Promise<{ pack: Buffer; files: CacheFile[] }> {
      const dir = join(work, "compressible");
      for (let i = 0; i < 3; i++) await put(dir, `inductor/c${i}/k${i}.py`, pseudoSource(i + 7, 200_000));
      const files = await digestFiles(dir, (await listCacheDir(dir)).files);
      return { pack: await buffer(packOf(dir, files)), files };
    }

    /** The unpack's error, or a failure naming `what` if it has not settled well after any real end. */
    function refusal(what: string, unpack: Promise<unknown>): Promise<unknown> {
      const outcome = unpack.then(
        () => new Error(`${what}: unpacked`),
        (e: unknown) => e,
      );
      return settles(outcome, { what: `${what}: the unpack` });
    }

    it("a byte flipped or a cut anywhere in the stream is refused, and no file is left open", async () => {
      const { pack, files } = await compressiblePack();
      const cases: [string, Buffer][] = [];
      for (let k = 0; k < 120; k++) {
        const at = Math.floor((pack.length * k) / 120);
        const b = Buffer.from(pack);
        b[at] = (b[at] as number) ^ 0x5a;
        cases.push([`byte ${at} flipped`, b]);
      }
      for (let k = 0; k < 40; k++) {
        const len = Math.floor((pack.length * k) / 40);
        cases.push([`cut to ${len} bytes`, pack.subarray(0, len)]);
      }
      for (const [what, body] of cases) {
        const dest = await mkdtemp(join(work, "dest-"));
        // In pieces, as a response arrives: the parser is mid-file when the damage comes.
        const pieces = [];
        for (let at = 0; at < body.length; at += 16 * 1024) pieces.push(body.subarray(at, at + 16 * 1024));
        const err = await refusal(what, unpackVerified(Readable.from(pieces), dest, files));
        // A flipped gzip mtime or OS byte unpacks fine; only the pack's digest (the caller's) sees it.
        if (err instanceof Error && err.message.endsWith("unpacked")) continue;
        expect((err as { code?: string }).code, `${what}: ${(err as Error).message}`).toBe(
          "CS_CACHE_REMOTE_INVALID",
        );
        expect(await openFilesUnder(dest), what).toEqual([]);
      }
    }, 120_000);

    it("an abort while a file is being written ends the unpack with the abort's reason, its file closed", async () => {
      const { pack, files } = await compressiblePack();
      const dest = join(work, "dest");
      await mkdir(dest);
      // Half the pack, then nothing: a stalled response.
      const stalled = new Readable({ read() {} });
      stalled.push(pack.subarray(0, Math.floor(pack.length / 2)));
      const controller = new AbortController();
      const unpack = unpackVerified(stalled, dest, files, controller.signal);
      await waitFor("a file being written", async () => (await openFilesUnder(dest)).length > 0);
      const reason = new Error("deadline");
      controller.abort(reason);
      expect(await refusal("the aborted unpack", unpack)).toBe(reason);
      expect(await openFilesUnder(dest)).toEqual([]);
      expect(stalled.destroyed).toBe(true);
    });

    it("a body that breaks by itself is its own error (a failed transfer), not a bad pack", async () => {
      const { pack, files } = await compressiblePack();
      const dest = join(work, "dest");
      await mkdir(dest);
      const cut = Object.assign(new Error("aborted"), { code: "ECONNRESET" });
      const body = new Readable({ read() {} });
      body.push(pack.subarray(0, Math.floor(pack.length / 2)));
      setImmediate(() => body.destroy(cut));
      expect(await refusal("the broken body", unpackVerified(body, dest, files))).toBe(cut);
      expect(await openFilesUnder(dest)).toEqual([]);
    });
  });

  it("regression: a listing raced through a swapped directory could pack a file from outside; the snapshot refuses it", async () => {
    const outside = join(work, "outside");
    await put(outside, "inductor/secret.py", "token");
    await put(outside, "secret.py", "token");
    const dir = join(work, "cache");
    await put(dir, "real.py", "x");
    await symlink(join(outside, "inductor"), join(dir, "inductor"));
    await symlink(join(outside, "secret.py"), join(dir, "alias.py"));
    await symlink(outside, join(work, "keyed-link"));
    // What listCacheDir returns when the pod swaps a directory for a link between reading the
    // directory and stat'ing its files: the outside file, with its own inode.
    const raced = async (path: string, real: string) => {
      const st = await stat(real);
      return [{ path, bytes: st.size, mtimeMs: st.mtimeMs, dev: st.dev, ino: st.ino }];
    };
    const at = [
      // an intermediate directory that is a symlink
      [dir, await raced("inductor/secret.py", join(outside, "inductor", "secret.py"))],
      // the file itself a symlink
      [dir, await raced("alias.py", join(outside, "secret.py"))],
      // the keyed directory itself a symlink
      [join(work, "keyed-link"), await raced("inductor/secret.py", join(outside, "inductor", "secret.py"))],
    ] as const;
    for (const [i, [keyed, listing]] of at.entries()) {
      const snap = join(work, `snap-${i}`);
      const err = await expectRejection(snapshotFiles(keyed, [...listing], snap), "CS_KEY_UNSAFE");
      expect(err.message).toContain(listing[0]?.path);
      expect((await listCacheDir(snap)).files, listing[0]?.path).toEqual([]);
    }
  });
});
