/**
 * The keyed directories are the pods' to write, and a pod may run as root: whatever it plants there,
 * the daemon must never change, read or upload anything outside the keyed directory. Real files, the
 * real S3 server (RGW), the node's manager in process.
 */
import { mkdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { gunzipSync } from "node:zlib";
import * as tar from "tar";
import { describe, expect, it } from "vitest";
import { freshBucket } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { H100, readManifest, readObject, remoteKeys, useManagers } from "./harness.js";

const fx = useS3Fixture("cs-cc-safety-");
const managers = useManagers(fx);
const identity = { vllm: "0.11.0" };

async function node(root: string, remote: string, gpu: () => typeof H100 = () => H100, viaProxy = false) {
  return (await managers({ root, remote, gpu, viaProxy })).m;
}

async function manifestFiles(bucket: string, key: string): Promise<string[]> {
  const m = await readManifest(fx, bucket, `cc/${key}/manifest.json`);
  return m.files.map((f) => f.path).sort();
}

const SECRET = "OUTSIDE-THE-KEYED-DIRECTORY";

/** A directory the daemon can read and no pod should: every file in it holds SECRET. */
async function hostSecrets(dir: string, files: string[]): Promise<void> {
  for (const rel of files) {
    await mkdir(dirname(join(dir, rel)), { recursive: true });
    await writeFile(join(dir, rel), `${SECRET} ${rel}\n`);
  }
}

/** The uploaded pack's entries, and whether any byte of it, unpacked, is from outside. */
async function uploaded(bucket: string, key: string): Promise<{ entries: string[]; leaked: boolean }> {
  const m = await readManifest(fx, bucket, `cc/${key}/manifest.json`);
  const raw = gunzipSync(await readObject(fx, bucket, `cc/${key}/${m.pack.name}`));
  const entries: string[] = [];
  const parser = new tar.Parser({
    onReadEntry: (e) => {
      entries.push(e.path.replace(/^\.\//, ""));
      e.resume();
    },
  });
  const ended = new Promise((resolve) => parser.on("end", resolve));
  parser.end(raw);
  await ended;
  return { entries: entries.sort(), leaked: raw.includes(SECRET) };
}

describe("what a pod plants in its keyed directory", () => {
  it("a keyed directory replaced by a symlink is moved aside, not followed: no chmod, no upload outside", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`);
    const outside = join(fx.work, "host-secrets");
    await mkdir(outside, { mode: 0o700 });
    await writeFile(join(outside, "token"), "s3cr3t", { mode: 0o600 });

    const first = await m.restore({ identity, timeoutMs: 10_000 });
    expect(first.outcome).toBe("miss");
    // A root pod swaps its keyed directory for a link to somewhere the daemon can see.
    await rm(first.path, { recursive: true });
    await symlink(outside, first.path);

    // Publishing through the link finds nothing to publish.
    expect((await m.publish(first.key, "api")).outcome).toBe("empty");
    // The next hand-over moves the link aside and makes a real directory.
    const again = await m.restore({ identity, timeoutMs: 10_000 });
    expect(again.outcome).toBe("miss");
    expect((await stat(again.path)).isDirectory()).toBe(true);
    expect((await stat(outside)).mode & 0o777).toBe(0o700);
    expect((await stat(join(outside, "token"))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(outside, "token"), "utf8")).toBe("s3cr3t");
  });

  it("a symlinked subdirectory is not published, only the real files are", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`);
    const outside = join(fx.work, "elsewhere");
    await mkdir(outside);
    await writeFile(join(outside, "secret.py"), "token = 's3cr3t'");
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    await mkdir(join(r.path, "torch_compile_cache", "h"), { recursive: true });
    await writeFile(join(r.path, "torch_compile_cache", "h", "real.py"), "x = 1");
    await symlink(outside, join(r.path, "torch_compile_cache", "linked"));
    await symlink(join(outside, "secret.py"), join(r.path, "alias.py"));

    expect((await m.publish(r.key, "api")).outcome).toBe("published");
    expect(await manifestFiles(bucket, r.key)).toEqual(["torch_compile_cache/h/real.py"]);
  });

  it("a node without one GPU kind answers an error outcome, not a refusal: the pod is not its fault", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`, () => ({
      ...H100,
      gpuProduct: "mixed",
    }));
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    expect(r).toMatchObject({ outcome: "error", path: "", error: { code: "CS_CACHE_KEY_INVALID" } });
    // The pod's own mistake is still a refusal.
    await expect(m.restore({ identity: { vllm: "bad version" }, timeoutMs: 10_000 })).rejects.toMatchObject({
      code: "CS_CACHE_KEY_INVALID",
    });
  });

  it("a symlink planted at every depth is never followed: only the real files are packed, no byte from outside", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`);
    const outside = join(fx.work, "host");
    await hostSecrets(outside, ["secret.py", "inductor/c0/k0.py", "inductor/c1/k1.py", "deep/a/b/x.py"]);
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    const base = join(r.path, "torch_compile_cache", "h", "rank_0_0");
    await mkdir(join(base, "inductor", "c0"), { recursive: true });
    await writeFile(join(base, "inductor", "c0", "k0.py"), "inside = 1\n");
    await writeFile(join(r.path, "top.json"), "{}");
    const links: [string, string][] = [
      // depth 1: a file, a directory, the root of the host, a dangling one
      ["alias.py", join(outside, "secret.py")],
      ["linked", outside],
      ["slash", "/"],
      ["dangling.py", join(outside, "nothing-here")],
      // depth 2: a directory beside the real tree
      ["torch_compile_cache/elsewhere", join(outside, "inductor")],
      // depth 4: a sibling of a real directory, named like the pod's own
      ["torch_compile_cache/h/rank_0_0/inductor/c1", join(outside, "inductor", "c1")],
      // depth 5: a file next to a real one, and a relative link climbing out
      ["torch_compile_cache/h/rank_0_0/inductor/c0/alias.py", join(outside, "secret.py")],
      ["torch_compile_cache/h/rank_0_0/inductor/c0/up.py", "../../../../../../host/secret.py"],
    ];
    for (const [at, to] of links) await symlink(to, join(r.path, at));

    expect((await m.publish(r.key, "api")).outcome).toBe("published");
    const real = ["top.json", "torch_compile_cache/h/rank_0_0/inductor/c0/k0.py"];
    expect(await manifestFiles(bucket, r.key)).toEqual(real);
    const pack = await uploaded(bucket, r.key);
    expect(pack.entries).toEqual(real);
    expect(pack.leaked).toBe(false);
  });

  it("a directory, the keyed directory or a file swapped for a symlink mid-publish fails it: nothing uploaded", async () => {
    const bucket = await freshBucket(fx.client, "ccsafe");
    const m = await node(join(fx.work, "root"), `s3://${bucket}/cc/`, () => H100, true);
    const outside = join(fx.work, "host");
    const r = await m.restore({ identity, timeoutMs: 10_000 });
    const rel = "torch_compile_cache/h/rank_0_0/inductor/c0/k0.py";
    // The outside holds the same layout, so every listed path also names a file there.
    await hostSecrets(outside, [rel, `key/${rel}`, "h/rank_0_0/inductor/c0/k0.py", "k0.py"]);
    await mkdir(dirname(join(r.path, rel)), { recursive: true });
    await writeFile(join(r.path, rel), "inside = 1\n");
    const swaps: [string, () => Promise<void>][] = [
      [
        "an intermediate directory",
        async () => {
          await rename(join(r.path, "torch_compile_cache", "h"), join(fx.work, "moved-h"));
          await symlink(join(outside, "h"), join(r.path, "torch_compile_cache", "h"));
        },
      ],
      [
        "the keyed directory",
        async () => {
          await rename(r.path, join(fx.work, "moved-key"));
          await symlink(join(outside, "key"), r.path);
        },
      ],
      [
        "the file",
        async () => {
          await rm(join(r.path, rel));
          await symlink(join(outside, "k0.py"), join(r.path, rel));
        },
      ],
    ];
    for (const [what, swap] of swaps) {
      // Between the listing and the packing: the publish asks whether the remote has the key.
      fx.proxy.addRule({
        match: { method: "HEAD", path: "/manifest.json" },
        times: 1,
        action: { kind: "hook", fn: swap },
      });
      const result = await m.publish(r.key, "api");
      expect([what, result.outcome, result.error?.code]).toEqual([what, "failed", "CS_KEY_UNSAFE"]);
      expect(await remoteKeys(fx, bucket), what).toEqual([]);
      // Put back for the next swap: a real directory with the real file.
      await rm(r.path, { recursive: true, force: true });
      await mkdir(dirname(join(r.path, rel)), { recursive: true });
      await writeFile(join(r.path, rel), "inside = 1\n");
    }
    expect(await readFile(join(outside, rel), "utf8")).toContain(SECRET);
  });
});
