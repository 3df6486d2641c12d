import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import * as tar from "tar";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  type CacheFile,
  digestFiles,
  isNoise,
  listCacheDir,
  packStream,
  unpackVerified,
} from "../../src/compile-cache/pack.js";
import { expectCode } from "../support/expect-error.js";

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
    await unpackVerified(
      packStream(
        dir,
        files.map((f) => f.path),
      ),
      dest,
      files,
    );
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
      const err = await expectCode(unpackVerified(body, dest, list), "CS_CACHE_REMOTE_INVALID");
      expect(err.message).toMatch(pattern);
    };
    // An extra file.
    await expectRefused(
      packStream(
        dir,
        files.map((f) => f.path),
      ),
      files.slice(1),
      /computation_graph.py" is not in the manifest/,
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
    const err = await expectCode(
      unpackVerified(
        packStream(
          dir,
          files.map((f) => f.path),
        ),
        dest,
        lying,
      ),
      "CS_CACHE_REMOTE_INVALID",
    );
    expect(err.message).toContain(files[0]?.sha256);
    expect(err.message).toContain(sha("something else"));
    // A listed file missing from the pack.
    const dest2 = join(work, "dest2");
    await mkdir(dest2);
    const extra = [...files, { path: "missing.py", bytes: 1, sha256: sha("x") }];
    const err2 = await expectCode(
      unpackVerified(
        packStream(
          dir,
          files.map((f) => f.path),
        ),
        dest2,
        extra,
      ),
      "CS_CACHE_REMOTE_INVALID",
    );
    expect(err2.message).toContain("missing.py");
    expect(await readFile(join(dir, "__pycache__/m.cpython-311.pyc"), "utf8")).toBe("bytecode");
  });
});
