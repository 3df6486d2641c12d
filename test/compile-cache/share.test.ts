/**
 * Compile caches shared between nodes through one bucket on the real S3 server (Ceph RGW). Each node
 * is a real `coldstart daemon` child process with its own staging root; its GPUs come from the NVML
 * ABI double (test/support/native/fake-nvml.c: FAKE_NVML=h100x2 or l40sx2). The "pod" is the real
 * `coldstart wait --compile-cache` plus a few file writes where vLLM would write its artifacts.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, relative } from "node:path";
import {
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { afterEach, describe, expect, it } from "vitest";
import { callDaemon } from "../../src/api/client.js";
import { builtAddon, fakeLibraries } from "../support/native-doubles.js";
import {
  coldstart,
  type DaemonProcess,
  daemonMetric,
  finish,
  killDaemons,
  startDaemonProcess,
} from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { gate } from "../support/wait.js";
import { pseudoSource, waitFor } from "./harness.js";

const fx = useS3Fixture("cs-cc-");
const TOKEN = "cc-test-token";
const IDENTITY = ["--vllm", "0.6.4.post1", "--torch", "2.5.1", "--torch-cuda", "12.4", "--triton", "3.1.0"];
const daemons: DaemonProcess[] = [];
/**
 * Up to five daemons and a dozen CLI processes a test: on a loaded 2-core machine that alone can take
 * longer than the default minute, so the bound is generous (only a hang should reach it).
 */
const DAEMONS = { timeout: 180_000 };

afterEach(async () => {
  await killDaemons(daemons);
});

interface Node {
  name: string;
  root: string;
  socket: string;
  daemon: DaemonProcess;
}

interface Shared {
  bucket: string;
  remote: string;
  modelSource: string;
}

async function shared(): Promise<Shared> {
  const bucket = await freshBucket(fx.client, "cc");
  await putFiles(fx.client, bucket, "m/", [
    { relPath: "config.json", body: Buffer.from('{"model_type":"llama"}'), sha256: "" },
  ]);
  return { bucket, remote: `s3://${bucket}/compile-cache/`, modelSource: `s3://${bucket}/m/` };
}

async function node(
  name: string,
  s: Shared,
  gpu: "h100x2" | "l40sx2" | "none",
  extra: string[] = [],
  endpoint = fx.proxy.url,
): Promise<Node> {
  builtAddon();
  const libs = fakeLibraries();
  const root = join(fx.work, name, "root");
  const socket = join(fx.work, name, "run", "coldstart.sock");
  const tokens = join(fx.work, "tokens");
  await writeFile(tokens, `${TOKEN}\n`);
  const daemon = await startDaemonProcess(
    [
      "--root",
      root,
      "--socket",
      socket,
      "--token-file",
      tokens,
      "--allow-source",
      "s3://cc-*/**",
      "--endpoint",
      endpoint,
      "--path-style",
      "--gds",
      "off",
      "--nvidia-smi",
      "/nonexistent",
      "--compile-cache-remote",
      s.remote,
      "--compile-cache-publish",
      "manual",
      "--compile-cache-scan-interval",
      "200ms",
      "--log-level",
      "info",
      ...extra,
    ],
    fx.s3,
    { COLDSTART_NVML_LIBRARY: libs.nvml, FAKE_NVML: gpu, COLDSTART_NODE_NAME: name },
  );
  daemons.push(daemon);
  return { name, root, socket, daemon };
}

/** The init container: `coldstart wait --compile-cache`; returns the env file's variables. */
async function handshake(n: Node, s: Shared, args: string[] = IDENTITY) {
  const envFile = join(fx.work, n.name, `env-${Math.random().toString(36).slice(2)}`);
  const out = await finish(
    coldstart(
      [
        "wait",
        "org/model",
        "--socket",
        n.socket,
        "--source",
        s.modelSource,
        "--env-file",
        envFile,
        "--compile-cache",
        "--json",
        ...args,
      ],
      fx.s3,
    ),
  );
  const env: Record<string, string> = {};
  if (out.code === 0) {
    for (const line of (await readFile(envFile, "utf8")).trim().split("\n")) {
      const at = line.indexOf("=");
      env[line.slice(0, at)] = line.slice(at + 1).replace(/^'|'$/g, "");
    }
  }
  return { out, env };
}

/** What vLLM would write: a compiled graph, Inductor code, Triton kernels, and a lock (noise). */
async function compile(dir: string, seed: string, files = 12, bytes = 64 * 1024): Promise<void> {
  absolute(dir);
  const hash = createHash("sha256").update(seed).digest("hex").slice(0, 10);
  for (let i = 0; i < files; i++) {
    const rel = `torch_compile_cache/${hash}/rank_0_0/inductor_cache/${i % 4}x/c${seed}${i}.py`;
    await mkdir(dirname(join(dir, rel)), { recursive: true });
    await writeFile(join(dir, rel), Buffer.concat([Buffer.from(`# ${seed} ${i}\n`), randomBytes(bytes)]));
  }
  await writeFile(join(dir, "torch_compile_cache", hash, "rank_0_0", "triton.lock"), "");
}

/**
 * compile(), landing all at once (one rename of its hash directory): the daemon's scans never find
 * it half-written, however slowly the files are written.
 */
async function compileAtOnce(dir: string, seed: string, files: number, bytes: number): Promise<void> {
  absolute(dir);
  const staging = join(fx.work, `compiling-${seed}`);
  await compile(staging, seed, files, bytes);
  const [hash = ""] = await readdir(join(staging, "torch_compile_cache"));
  await mkdir(join(dir, "torch_compile_cache"), { recursive: true });
  await rename(join(staging, "torch_compile_cache", hash), join(dir, "torch_compile_cache", hash));
}

/**
 * A directory from the env file must be there: "" (a variable the env file lacked) would make
 * compile() write into the repository and tree() compare nothing.
 */
function absolute(dir: string): void {
  if (!isAbsolute(dir))
    throw new Error(`expected an absolute directory from the env file, got ${JSON.stringify(dir)}`);
}

/** path -> sha256 of every file under dir (noise included: it must not travel). */
async function tree(dir: string): Promise<Record<string, string>> {
  absolute(dir);
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (!e.isFile()) continue;
    const abs = join(e.parentPath, e.name);
    // A daemon may be replacing a state file meanwhile.
    const bytes = await readFile(abs).catch(() => undefined);
    if (bytes) out[relative(dir, abs)] = createHash("sha256").update(bytes).digest("hex");
  }
  return out;
}

const withoutNoise = (t: Record<string, string>) =>
  Object.fromEntries(Object.entries(t).filter(([p]) => !p.endsWith(".lock")));

async function publish(n: Node, key: string) {
  const out = await finish(coldstart(["cache", "publish", key, "--socket", n.socket, "--json"], fx.s3));
  return { out, body: out.code === 0 ? JSON.parse(out.stdout.trim()) : undefined };
}

/** A fresh bucket, and node `name` (an H100) that missed, compiled `files` small files and published. */
async function publishedBy(name: string, files: number) {
  const s = await shared();
  const a = await node(name, s, "h100x2");
  const first = await handshake(a, s);
  const key = first.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
  await compile(first.env.VLLM_CACHE_ROOT ?? "", "a", files, 1024);
  expect((await publish(a, key)).body?.outcome).toBe("published");
  return { s, a, first, key };
}

/** `coldstart cache prune` against the bucket straight (no proxy), with a 1 s upload grace. */
function prune(s: Shared, args: string[] = []) {
  const flags = ["--compile-cache-remote", s.remote, "--endpoint", fx.s3.endpoint, "--path-style"];
  return finish(coldstart(["cache", "prune", ...flags, "--upload-grace", "1s", ...args], fx.s3));
}

async function remoteKeys(s: Shared): Promise<string[]> {
  const out = await fx.client.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: "compile-cache/" }));
  return (out.Contents ?? []).map((o) => o.Key ?? "").sort();
}

/** An object of the shared bucket, whole. */
async function remoteBytes(s: Shared, key: string): Promise<Buffer> {
  const out = await fx.client.send(new GetObjectCommand({ Bucket: s.bucket, Key: key }));
  return Buffer.from((await out.Body?.transformToByteArray()) ?? []);
}

/** The remote manifest of a compile-cache key. */
async function remoteManifest(s: Shared, key: string) {
  return JSON.parse((await remoteBytes(s, `compile-cache/${key}/manifest.json`)).toString("utf8"));
}

const metric = (n: Node, series: string) => daemonMetric(n.daemon, series);

describe("compile caches shared through one bucket", DAEMONS, () => {
  it("A publishes; B with the same GPU restores byte-identical; C with another GPU misses", async () => {
    const s = await shared();
    const a = await node("a", s, "h100x2");

    const first = await handshake(a, s);
    expect(first.out.code, first.out.stderr).toBe(0);
    expect(first.env.COLDSTART_COMPILE_CACHE, first.out.stderr).toBe("miss");
    const key = first.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
    expect(key).toMatch(/^nvidia-h100-80gb-hbm3-sm90-drv570-[0-9a-f]{20}$/);
    expect(first.env.VLLM_CACHE_ROOT).toBe(join(a.root, "compile-cache", key));
    expect(first.env.TORCHINDUCTOR_CACHE_DIR).toBe(join(a.root, "compile-cache", key, "torchinductor"));
    expect(first.env.TRITON_CACHE_DIR).toBe(join(a.root, "compile-cache", key, "triton"));
    // The pod's user is not the daemon's: it must be able to write there.
    expect((await stat(first.env.VLLM_CACHE_ROOT ?? "")).mode & 0o777).toBe(0o777);

    await compile(first.env.VLLM_CACHE_ROOT ?? "", "a");
    const published = await publish(a, key);
    expect(published.out.code, published.out.stderr).toBe(0);
    expect(published.body).toMatchObject({ key, outcome: "published", files: 12 });
    const objects = await remoteKeys(s);
    expect(objects.filter((k) => k.endsWith("/manifest.json"))).toEqual([
      `compile-cache/${key}/manifest.json`,
    ]);
    expect(objects.filter((k) => k.includes("/packs/"))).toHaveLength(1);

    const b = await node("b", s, "h100x2");
    const second = await handshake(b, s);
    expect(second.out.code, second.out.stderr).toBe(0);
    expect(second.env.COLDSTART_COMPILE_CACHE).toBe("hit");
    expect(second.env.COLDSTART_COMPILE_CACHE_KEY).toBe(key);
    const restored = await tree(second.env.VLLM_CACHE_ROOT ?? "");
    expect(restored).toEqual(withoutNoise(await tree(first.env.VLLM_CACHE_ROOT ?? "")));
    expect(Object.keys(restored)).toHaveLength(12);
    expect(await metric(b, 'coldstart_compile_cache_restores_total{outcome="hit"}')).toBe(1);
    expect(await metric(b, "coldstart_compile_cache_restore_bytes_total")).toBeGreaterThan(12 * 64 * 1024);
    // The hit is recorded remotely, for prune.
    expect(await remoteKeys(s)).toContain(`compile-cache/${key}/last-hit`);

    const c = await node("c", s, "l40sx2");
    const third = await handshake(c, s);
    expect(third.out.code, third.out.stderr).toBe(0);
    expect(third.env.COLDSTART_COMPILE_CACHE).toBe("miss");
    expect(third.env.COLDSTART_COMPILE_CACHE_KEY).toMatch(/^nvidia-l40s-sm89-drv570-/);
    expect(await tree(third.env.VLLM_CACHE_ROOT ?? "")).toEqual({});
    // Nothing of A's anywhere under C's staging root.
    const cFiles = Object.keys(await tree(c.root));
    expect(cFiles.filter((p) => p.includes("torch_compile_cache"))).toEqual([]);

    // The API shows what each node holds, and where it came from.
    const listed = await callDaemon({ url: b.daemon.api, token: TOKEN }, "GET", "/v1/compile-caches");
    expect(listed.body).toMatchObject({
      caches: [{ key, origin: "restored", files: 12, remote: { uri: s.remote, state: "present" } }],
    });
    // A second pod on B finds the key local, without asking the remote.
    const again = await handshake(b, s);
    expect(again.env.COLDSTART_COMPILE_CACHE).toBe("local");
  });

  it("a restored key whose directory then grows is counted as a silent miss, noise is not", async () => {
    const { s, key } = await publishedBy("a", 3);

    const b = await node("b", s, "h100x2");
    const second = await handshake(b, s);
    expect(second.env.COLDSTART_COMPILE_CACHE).toBe("hit");
    const dir = second.env.VLLM_CACHE_ROOT ?? "";
    const counter = "coldstart_compile_cache_silent_misses_total";

    // Locks and bytecode are what an engine writes even on a hit.
    await writeFile(join(dir, "torch_compile_cache", "x.lock"), "");
    await mkdir(join(dir, "__pycache__"), { recursive: true });
    await writeFile(join(dir, "__pycache__", "m.cpython-311.pyc"), "x");

    // vLLM compiled again under another hash: its own key differed from the publisher's.
    await compileAtOnce(dir, "b-recompiled", 2, 1024);
    await waitFor(
      "a silent miss counted by the daemon's scans",
      async () => (await metric(b, counter)) === 1,
    );
    const warned = b.daemon.logs.filter((l) => String(l.msg).includes("silent miss"));
    // Whether a scan ran between the noise and the artifacts or not, the one miss is the two
    // artifacts, never the noise (test/compile-cache/scan.test.ts checks each step on its own
    // clock, and that more growth is not counted again).
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ key, newFiles: 2, level: 40 });
    expect(warned[0]?.examples).toEqual([
      expect.stringMatching(/\/cb-recompiled0\.py$/),
      expect.stringMatching(/\/cb-recompiled1\.py$/),
    ]);
  });

  // "Only then" (not while files keep arriving, not before the quiet period) is decided by a clock,
  // so test/compile-cache/scan.test.ts checks it on an injected one; here the daemon's own timer and
  // clock must get there by themselves.
  it("publishes on its own once the directory has been quiet", async () => {
    const s = await shared();
    const a = await node("a", s, "h100x2", [
      "--compile-cache-publish",
      "auto",
      "--compile-cache-quiet",
      "1s",
    ]);
    const first = await handshake(a, s);
    const key = first.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
    const dir = first.env.VLLM_CACHE_ROOT ?? "";
    await compileAtOnce(dir, "auto", 4, 1024);
    // Counted once the manifest is written.
    await waitFor(
      "a publish by the daemon's own scans",
      async () => (await metric(a, 'coldstart_compile_cache_publishes_total{outcome="published"}')) === 1,
      60_000,
    );
    const manifest = await remoteManifest(s, key);
    expect(manifest).toMatchObject({ format: "coldstart-compile-cache/v1", key, publisher: { node: "a" } });
    expect(manifest.files.map((f: { path: string }) => f.path).sort()).toEqual(
      Object.keys(withoutNoise(await tree(dir))).sort(),
    );
    expect(manifest.files).toHaveLength(4);
  });

  it("a publish killed mid-upload is never restored, and prune removes what it left", async () => {
    const s = await shared();
    const a = await node("a", s, "h100x2");
    const first = await handshake(a, s);
    const key = first.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
    // Random bytes do not compress: the pack is a multipart upload of several 16 MiB parts.
    await compile(first.env.VLLM_CACHE_ROOT ?? "", "big", 6, 8 * 1024 * 1024);
    let killed = false;
    fx.proxy.addRule({
      match: { method: "PUT", predicate: (r) => r.query.includes("partNumber=2") },
      times: 1,
      action: {
        kind: "hook",
        fn: async () => {
          a.daemon.child.kill("SIGKILL");
          killed = true;
          // Dead before its part goes on: nothing after this point of the upload can run.
          await a.daemon.exited;
        },
      },
    });
    const publishing = await publish(a, key);
    expect(killed).toBe(true);
    expect(publishing.out.code).not.toBe(0);
    await a.daemon.exited;
    expect((await remoteKeys(s)).filter((k) => k.endsWith("manifest.json"))).toEqual([]);

    const b = await node("b", s, "h100x2");
    const second = await handshake(b, s);
    expect(second.out.code, second.out.stderr).toBe(0);
    expect(second.env.COLDSTART_COMPILE_CACHE).toBe("miss");
    expect(await tree(second.env.VLLM_CACHE_ROOT ?? "")).toEqual({});

    const uploads = async () =>
      (await fx.client.send(new ListMultipartUploadsCommand({ Bucket: s.bucket, Prefix: "compile-cache/" })))
        .Uploads ?? [];
    expect(await uploads()).toHaveLength(1);
    // Once older than the upload grace (1 s), a dry run lists it, and removes nothing.
    let dry = "";
    await waitFor("the dry run to list the unfinished upload", async () => {
      const run = await prune(s, ["--json", "--dry-run"]);
      expect(run.code, run.stderr).toBe(0);
      dry = run.stdout;
      return (JSON.parse(dry) as { actions: unknown[] }).actions.length > 0;
    });
    expect(JSON.parse(dry)).toMatchObject({
      dryRun: true,
      removed: 0,
      actions: [{ kind: "unfinished-upload", cacheKey: key }],
    });
    expect(await uploads()).toHaveLength(1);
    const real = await prune(s, ["--json"]);
    expect(real.code, real.stderr).toBe(0);
    expect(JSON.parse(real.stdout)).toMatchObject({ dryRun: false, removed: 1 });
    expect(await uploads()).toHaveLength(0);
  });

  it("two nodes publishing one key at once leave one consistent cache", async () => {
    const s = await shared();
    const [a1, a2] = await Promise.all([node("a1", s, "h100x2"), node("a2", s, "h100x2")]);
    const [h1, h2] = await Promise.all([handshake(a1, s), handshake(a2, s)]);
    const key = h1.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
    expect(h2.env.COLDSTART_COMPILE_CACHE_KEY).toBe(key);
    // Same paths, different bytes (and one path each of its own): mixing them would be wrong.
    await compile(h1.env.VLLM_CACHE_ROOT ?? "", "same", 8, 256 * 1024);
    await compile(h2.env.VLLM_CACHE_ROOT ?? "", "same", 8, 256 * 1024);
    await writeFile(join(h1.env.VLLM_CACHE_ROOT ?? "", "only-a1.json"), "{}");
    await writeFile(join(h2.env.VLLM_CACHE_ROOT ?? "", "only-a2.json"), "{}");
    // Both uploads are held until both have begun: each found no manifest before it.
    let arrived = 0;
    const both = gate();
    fx.proxy.addRule({
      match: { method: "PUT", path: "/packs/" },
      times: 2,
      action: {
        kind: "hook",
        fn: async () => {
          if (++arrived === 2) both.open();
          await both.opened;
        },
      },
    });
    const publishing = Promise.all([publish(a1, key), publish(a2, key)]);
    try {
      await waitFor("both uploads to begin (each found no manifest)", async () => arrived === 2);
    } finally {
      both.open(); // a broken run must not leave an upload held
    }
    const [p1, p2] = await publishing;
    expect(arrived).toBe(2);
    const outcomes = [p1.body?.outcome, p2.body?.outcome].sort();
    // With a conditional PUT the loser sees "exists"; where the store ignores If-None-Match both
    // manifests are written and the last one wins. Either way each manifest names its own pack.
    expect(["exists,published", "published,published"]).toContain(outcomes.join(","));

    const b = await node("b", s, "h100x2");
    const restored = await handshake(b, s);
    expect(restored.env.COLDSTART_COMPILE_CACHE).toBe("hit");
    const got = await tree(restored.env.VLLM_CACHE_ROOT ?? "");
    const one = withoutNoise(await tree(h1.env.VLLM_CACHE_ROOT ?? ""));
    const two = withoutNoise(await tree(h2.env.VLLM_CACHE_ROOT ?? ""));
    expect([one, two]).toContainEqual(got);
    // Prune keeps the manifest's pack and removes the loser's, if one was left, once it is older
    // than the upload grace (1 s).
    await waitFor("prune to leave only the manifest's pack", async () => {
      const pruned = await prune(s);
      expect(pruned.code, pruned.stderr).toBe(0);
      return (await remoteKeys(s)).filter((k) => k.includes("/packs/")).length === 1;
    });
    const c = await node("c", s, "h100x2");
    const after = await handshake(c, s);
    expect(after.env.COLDSTART_COMPILE_CACHE).toBe("hit");
    expect(await tree(after.env.VLLM_CACHE_ROOT ?? "")).toEqual(got);
  });

  it("a slow remote never holds the pod past --compile-cache-timeout: it starts with an empty cache", async () => {
    const { s, key } = await publishedBy("a", 2);

    const b = await node("b", s, "h100x2");
    // The pack never comes: only the daemon's deadline can end the restore. `wait` gives the answer
    // 2 s past it, then goes on without (no variables): "timeout" is the daemon's own answer.
    const never = gate();
    fx.proxy.addRule({
      match: { method: "GET", path: "/packs/" },
      action: { kind: "hook", fn: () => never.opened },
    });
    const slow = await handshake(b, s, [...IDENTITY, "--compile-cache-timeout", "2s"]).finally(never.open);
    expect(slow.out.code, slow.out.stderr).toBe(0);
    expect(slow.env.COLDSTART_COMPILE_CACHE).toBe("timeout");
    expect(await metric(b, 'coldstart_compile_cache_restores_total{outcome="timeout"}')).toBe(1);
    // Abandoned, not installed late under the engine's feet: the restore is over, the key free.
    expect(await tree(slow.env.VLLM_CACHE_ROOT ?? "")).toEqual({});
    const listed = await callDaemon({ url: b.daemon.api, token: TOKEN }, "GET", "/v1/compile-caches");
    expect(listed.body).toMatchObject({ caches: [{ key, busy: null, origin: "local" }] });
  });

  it("a tampered pack or a manifest with an unsafe path is refused: a miss for the pod, nothing installed", async () => {
    const { s, key } = await publishedBy("a", 3);
    const manifestKey = `compile-cache/${key}/manifest.json`;
    const manifest = await remoteManifest(s, key);

    // The pack's bytes replaced (same length): the digest check refuses it.
    const packKey = `compile-cache/${key}/${manifest.pack.name}`;
    await fx.client.send(
      new PutObjectCommand({ Bucket: s.bucket, Key: packKey, Body: randomBytes(manifest.pack.bytes) }),
    );
    const b = await node("b", s, "h100x2");
    const tampered = await handshake(b, s);
    expect(tampered.out.code, tampered.out.stderr).toBe(0);
    expect(tampered.env.COLDSTART_COMPILE_CACHE).toBe("error");
    expect(await tree(tampered.env.VLLM_CACHE_ROOT ?? "")).toEqual({});
    const failure = b.daemon.logs.find((l) => l.msg === "compile cache restore failed; the pod compiles");
    expect(failure).toMatchObject({ key, code: "CS_CACHE_REMOTE_INVALID" });

    // A manifest naming ../ : refused before anything is fetched or written.
    const evil = {
      ...manifest,
      files: [{ ...manifest.files[0], path: "../../../escape.py" }, ...manifest.files.slice(1)],
    };
    await fx.client.send(
      new PutObjectCommand({ Bucket: s.bucket, Key: manifestKey, Body: JSON.stringify(evil) }),
    );
    const c = await node("c", s, "h100x2");
    const unsafe = await handshake(c, s);
    expect(unsafe.env.COLDSTART_COMPILE_CACHE).toBe("error");
    expect(Object.keys(await tree(join(fx.work, "c")))).not.toContain("escape.py");
    expect(c.daemon.logs.find((l) => l.code === "CS_CACHE_REMOTE_INVALID")?.err).toMatch(/unsafe path/);
  });
});

describe("regression: a restore of a pack with one flipped byte never answered", DAEMONS, () => {
  it("the daemon answers error within the timeout, counts it, and a second restore of the key answers too", async () => {
    const s = await shared();
    const a = await node("a", s, "h100x2");
    const first = await handshake(a, s);
    const key = first.env.COLDSTART_COMPILE_CACHE_KEY ?? "";
    // Generated source compresses into Huffman-coded blocks, and one large file is most of the
    // pack: a flipped byte breaks the stream in the middle of that file, which is what left its
    // writer waiting for ever.
    const rel = "torch_compile_cache/h/rank_0_0/inductor_cache/c0/k0.py";
    await mkdir(dirname(join(first.env.VLLM_CACHE_ROOT ?? "", rel)), { recursive: true });
    await writeFile(join(first.env.VLLM_CACHE_ROOT ?? "", rel), pseudoSource(1, 1536 * 1024));
    expect((await publish(a, key)).body?.outcome).toBe("published");
    const manifest = await remoteManifest(s, key);
    const packKey = `compile-cache/${key}/${manifest.pack.name}`;
    const pack = await remoteBytes(s, packKey);
    const at = Math.floor(pack.length * 0.4);
    pack[at] = (pack[at] as number) ^ 0x5a;
    await fx.client.send(new PutObjectCommand({ Bucket: s.bucket, Key: packKey, Body: pack }));

    const b = await node("b", s, "h100x2");
    const restore = async (timeoutSeconds: number) => {
      const body = {
        vllm: "0.6.4.post1",
        torch: "2.5.1",
        torchCuda: "12.4",
        triton: "3.1.0",
        timeoutSeconds,
      };
      // The client waits well past the daemon's own deadline: only a daemon that never answers fails here.
      const res = await callDaemon({ socketPath: b.socket }, "POST", "/v1/compile-caches", body, {
        timeoutMs: (timeoutSeconds + 30) * 1000,
      }).catch((err: Error) => {
        throw new Error(`no answer 30 s past the restore's ${timeoutSeconds} s timeout: ${err.message}`);
      });
      expect(res.status).toBe(200);
      return res.body as { key: string; path: string; outcome: string; error?: { code: string } };
    };
    const once = await restore(30);
    expect([once.key, once.outcome, once.error?.code]).toEqual([key, "error", "CS_CACHE_REMOTE_INVALID"]);
    // The key was released: a second asker gets its own answer, not the first one's hang.
    const twice = await restore(5);
    expect([twice.outcome, twice.error?.code]).toEqual(["error", "CS_CACHE_REMOTE_INVALID"]);
    expect(await metric(b, 'coldstart_compile_cache_restores_total{outcome="error"}')).toBe(2);
    expect(await tree(once.path)).toEqual({});
    expect(await readdir(join(b.root, "tmp", "compile-cache"))).toEqual([]);
  });
});

describe("a node without a GPU to key on", DAEMONS, () => {
  it("the pod still starts: wait exits 0 with a warning and no compile-cache variables", async () => {
    const s = await shared();
    const a = await node("a", s, "none");
    const { out, env } = await handshake(a, s);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stderr).toContain("no compile cache restored (CS_CACHE_KEY_INVALID");
    expect(env.COLDSTART_MODEL_PATH).toBeDefined();
    expect(env.VLLM_CACHE_ROOT).toBeUndefined();
    expect(await metric(a, 'coldstart_compile_cache_restores_total{outcome="error"}')).toBe(1);
  });
});

describe("compile-cache requests are validated", DAEMONS, () => {
  it("names the field of a bad identity (exit 2), refuses a remote outside the allowlist, needs a token on TCP", async () => {
    const s = await shared();
    const a = await node("a", s, "h100x2", ["--compile-cache-allow", "s3://cc-other-*/**"]);

    const noIdentity = await handshake(a, s, []);
    expect(noIdentity.out.code).toBe(2);
    expect(noIdentity.out.stdout + noIdentity.out.stderr).toMatch(/CS_CACHE_KEY_INVALID.*torch/);

    const badVersion = await handshake(a, s, ["--vllm", "0.6 4"]);
    expect(badVersion.out.code).toBe(2);
    expect(badVersion.out.stdout + badVersion.out.stderr).toContain('vllm "0.6 4" is invalid');

    const sock = { socketPath: a.socket };
    const forbidden = await callDaemon(sock, "POST", "/v1/compile-caches", {
      vllm: "0.6.4",
      remote: "s3://elsewhere/caches/",
    });
    expect(forbidden.status).toBe(403);
    expect(forbidden.body).toMatchObject({ error: { code: "CS_SOURCE_NOT_ALLOWED" } });
    const allowed = await callDaemon(sock, "POST", "/v1/compile-caches", {
      vllm: "0.6.4",
      remote: `s3://cc-other-${s.bucket}/x/`,
      timeoutSeconds: 5,
    });
    // Allowed, and that bucket does not exist: an error outcome, not a refusal.
    expect(allowed.status).toBe(200);
    expect((allowed.body as { outcome: string }).outcome).toBe("error");

    const unknown = await callDaemon(sock, "POST", "/v1/compile-caches", { vllm: "1", bogus: 1 });
    expect(unknown.status).toBe(400);

    const tcp = { url: a.daemon.api };
    expect((await callDaemon(tcp, "GET", "/v1/compile-caches")).status).toBe(401);
    expect((await callDaemon(tcp, "POST", "/v1/compile-caches", { vllm: "1" })).status).toBe(401);
    // The socket may restore and publish, not delete.
    expect((await callDaemon(sock, "DELETE", "/v1/compile-caches/x-1")).status).toBe(401);
    const auth = { url: a.daemon.api, token: TOKEN };
    const missing = await callDaemon(auth, "POST", "/v1/compile-caches/nvidia-x-sm90-drv1-0123/publish", {});
    expect([missing.status, missing.body]).toMatchObject([404, { error: { code: "CS_CACHE_NOT_FOUND" } }]);
    const bad = await callDaemon(auth, "DELETE", "/v1/compile-caches/..%2Fmodels");
    expect([bad.status, bad.body]).toMatchObject([400, { error: { code: "CS_CACHE_KEY_INVALID" } }]);
    const cli = await finish(coldstart(["cache", "publish", "nope-1", "--socket", a.socket], fx.s3));
    expect(cli.code).toBe(2);
    expect(cli.stderr).toContain("CS_CACHE_NOT_FOUND");
  });
});
