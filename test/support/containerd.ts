// A throw-away, real containerd (Debian's 1.6 package) in a temp dir, for tests that need
// `ctr` to import or pull images, plus an offline OCI image-layout builder and a hosts.toml
// writer for registry mirrors. Node built-ins and `tar` only; needs root.

import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { create as tarCreate } from "tar";
import { onPath, runCommand, tail } from "./commands.js";

export const CONTAINERD_NOT_INSTALLED_MESSAGE =
  "containerd tests need root and the Debian `containerd` package (containerd + ctr): run `bash scripts/install-test-deps.sh` as root";

/** True if `containerd` and `ctr` are installed and this process runs as root. */
export function containerdAvailable(): boolean {
  return process.getuid?.() === 0 && onPath("containerd") && onPath("ctr");
}

export interface CtrResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CtrOptions {
  /** containerd namespace (`ctr -n`); default `k8s.io`. */
  namespace?: string;
  /** Kill ctr after this long (default 60 s); the result then has code null. */
  timeoutMs?: number;
  env?: Record<string, string>;
}

export interface Containerd {
  /** The gRPC unix socket (`ctr -a`). */
  socket: string;
  /** containerd's `root` (persistent state: content store, metadata, snapshots). */
  root: string;
  /** `state` (runtime state, temp mounts). */
  state: string;
  /** `<root>/io.containerd.content.v1.content`; blobs are in `<contentDir>/blobs/sha256/<hex>`. */
  contentDir: string;
  configPath: string;
  /** containerd's stdout and stderr. */
  logPath: string;
  /** The snapshotter ctr uses by default here: `overlayfs` where it can mount, else `native`. */
  snapshotter: "overlayfs" | "native";
  pid: number;
  /** Runs `ctr -a <socket> -n <namespace> ...args` (CONTAINERD_SNAPSHOTTER set to `snapshotter`). */
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** Kills containerd's process group and waits for it to exit; unmounts anything left under `dir`. */
  stop(): Promise<void>;
}

/** A command's result as ctr callers read it: a timeout shows as code null and a note. */
async function runCapture(
  cmd: string,
  args: string[],
  timeoutMs: number,
  env: Record<string, string> = {},
): Promise<CtrResult> {
  const r = await runCommand(cmd, args, timeoutMs, env);
  return {
    code: r.timedOut ? null : r.code,
    stdout: r.stdout,
    stderr: r.timedOut ? `${r.stderr}\n[killed after ${timeoutMs} ms]` : r.stderr,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** TOML basic string. */
function q(s: string): string {
  return JSON.stringify(s);
}

/** Mount points at or under `dir`, deepest first. */
function mountsUnder(dir: string): string[] {
  let text: string;
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const unoctal = (s: string) =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split("\n")
    .map((line) => unoctal(line.split(" ")[4] ?? ""))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/**
 * Starts `containerd --config <dir>/config.toml` with root, state, sockets and the `opt`
 * plugin's path all under `dir`, the CRI plugin and the snapshotters that cannot work here
 * (aufs, btrfs, zfs, devmapper) disabled. Resolves once `ctr version` answers.
 */
export async function startContainerd(dir: string, opts: { timeoutMs?: number } = {}): Promise<Containerd> {
  if (!containerdAvailable()) throw new Error(CONTAINERD_NOT_INSTALLED_MESSAGE);
  dir = resolve(dir);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const root = join(dir, "root");
  const state = join(dir, "state");
  const socket = join(dir, "containerd.sock");
  // sun_path is 108 bytes including the NUL; the ttrpc socket adds ".ttrpc".
  if (Buffer.byteLength(`${socket}.ttrpc`) > 107) {
    throw new Error(`containerd socket path too long for a unix socket (use a shorter dir): ${socket}`);
  }
  const configPath = join(dir, "config.toml");
  const logPath = join(dir, "containerd.log");
  await mkdir(root, { recursive: true, mode: 0o711 });
  await mkdir(state, { recursive: true, mode: 0o711 });
  await writeFile(
    configPath,
    [
      "version = 2",
      `root = ${q(root)}`,
      `state = ${q(state)}`,
      "disabled_plugins = [",
      '  "io.containerd.grpc.v1.cri",',
      '  "io.containerd.snapshotter.v1.aufs",',
      '  "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.zfs",',
      '  "io.containerd.snapshotter.v1.devmapper",',
      '  "io.containerd.runtime.v1.linux",',
      "]",
      "",
      "[grpc]",
      `  address = ${q(socket)}`,
      "",
      "[ttrpc]",
      `  address = ${q(`${socket}.ttrpc`)}`,
      "",
      "[debug]",
      '  address = ""',
      '  level = "info"',
      "",
      "[metrics]",
      '  address = ""',
      "",
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${q(join(dir, "opt"))}`,
      "",
    ].join("\n"),
  );

  const logFd = openSync(logPath, "a");
  let child: ChildProcess;
  try {
    // detached: its own process group, so stop() can kill it and anything it forked
    child = spawn("containerd", ["--config", configPath], {
      detached: true,
      stdio: ["ignore", logFd, logFd],
      env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", HOME: process.env.HOME ?? "/root" },
    });
  } finally {
    closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error("could not spawn containerd");
  let exitCode: number | string | null | undefined;
  const exited = new Promise<void>((r) =>
    child.on("exit", (code, signal) => {
      exitCode = code ?? signal;
      r();
    }),
  );
  child.on("error", () => undefined);
  // backstop: if the test process dies without stop(), take containerd with it
  const onExit = () => {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // already gone
    }
  };
  process.on("exit", onExit);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      const signal = (sig: NodeJS.Signals) => {
        try {
          process.kill(-pid, sig);
        } catch {
          // group already gone
        }
      };
      if (exitCode === undefined) {
        signal("SIGTERM");
        const killed = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
        if (!killed) {
          signal("SIGKILL");
          await exited;
        }
      }
      // anything else left in the group (shims would be; we run no containers)
      signal("SIGKILL");
      process.off("exit", onExit);
      for (const m of mountsUnder(dir)) await runCommand("umount", ["-l", m], 10_000).catch(() => undefined);
    })();
    return stopped;
  };

  let snapshotter: "overlayfs" | "native" = "native";
  const ctr = (args: string[], o: CtrOptions = {}): Promise<CtrResult> =>
    runCapture("ctr", ["-a", socket, "-n", o.namespace ?? "k8s.io", ...args], o.timeoutMs ?? 60_000, {
      CONTAINERD_SNAPSHOTTER: snapshotter,
      ...o.env,
    });

  try {
    const deadline = Date.now() + timeoutMs;
    let last: CtrResult | undefined;
    for (;;) {
      if (exitCode !== undefined) {
        throw new Error(
          `containerd exited (${exitCode}) before it answered; log:\n${tail(await readLog(), 40)}`,
        );
      }
      last = await runCapture("ctr", ["-a", socket, "version"], 5_000);
      if (last.code === 0) break;
      if (Date.now() > deadline) {
        throw new Error(
          `containerd not answering on ${socket} after ${timeoutMs} ms: ${last.stderr.trim()}; log:\n${tail(await readLog(), 40)}`,
        );
      }
      await sleep(100);
    }
    // The overlayfs snapshotter's init does a trial overlay mount under root and skips itself if that fails.
    const plugins = await runCapture("ctr", ["-a", socket, "plugins", "ls"], 10_000);
    if (/^io\.containerd\.snapshotter\.v1\s+overlayfs\s+\S+\s+ok\s*$/m.test(plugins.stdout))
      snapshotter = "overlayfs";
  } catch (err) {
    await stop();
    throw err;
  }

  async function readLog(): Promise<string> {
    return readFile(logPath, "utf8").catch(() => "");
  }

  return {
    socket,
    root,
    state,
    contentDir: join(root, "io.containerd.content.v1.content"),
    configPath,
    logPath,
    get snapshotter() {
      return snapshotter;
    },
    pid,
    ctr,
    stop,
  };
}

export const MEDIA_TYPES = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
} as const;

export interface OciImage {
  /** The OCI image-layout tarball (`ctr images import` reads it). */
  tarPath: string;
  /** Full name with tag, as in the `io.containerd.image.name` annotation. */
  ref: string;
  manifestDigest: string;
  configDigest: string;
  /** Digests of the gzip'd layer blobs, in order. */
  layerDigests: string[];
  /** sha256 of each uncompressed layer tar (config rootfs.diff_ids). */
  diffIds: string[];
  /** Every blob (manifest, config, layers) by digest. */
  blobs: Map<string, Buffer>;
}

function sha256(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

const EPOCH = new Date(0);

/**
 * Builds a single-platform (linux/amd64) OCI image offline: layer i is a gzip'd tar holding one
 * file, `layer<i>.bin`, with contents `layers[i]`. Writes the image layout under
 * `<dir>/oci-layout-<tag>/` and its tarball at `<dir>/<tag>.oci.tar`.
 */
export async function buildOciImage(
  dir: string,
  opts: { name: string; tag: string; layers: Buffer[] },
): Promise<OciImage> {
  const ref = `${opts.name}:${opts.tag}`;
  const safe = opts.tag.replace(/[^A-Za-z0-9_.-]/g, "_");
  const work = join(resolve(dir), `oci-build-${safe}`);
  const layout = join(resolve(dir), `oci-layout-${safe}`);
  const blobDir = join(layout, "blobs", "sha256");
  await mkdir(blobDir, { recursive: true });
  const blobs = new Map<string, Buffer>();
  const put = async (data: Buffer): Promise<string> => {
    const digest = sha256(data);
    blobs.set(digest, data);
    await writeFile(join(blobDir, digest.slice("sha256:".length)), data);
    return digest;
  };

  const layerDescs: { mediaType: string; digest: string; size: number }[] = [];
  const diffIds: string[] = [];
  for (const [i, contents] of opts.layers.entries()) {
    const src = join(work, `layer${i}`);
    await mkdir(src, { recursive: true });
    const file = `layer${i}.bin`;
    await writeFile(join(src, file), contents);
    const tarFile = join(work, `layer${i}.tar`);
    tarCreate({ sync: true, file: tarFile, cwd: src, portable: true, mtime: EPOCH }, [file]);
    const raw = await readFile(tarFile);
    diffIds.push(sha256(raw));
    const gz = gzipSync(raw);
    layerDescs.push({ mediaType: MEDIA_TYPES.layerGzip, digest: await put(gz), size: gz.length });
  }

  const config = Buffer.from(
    JSON.stringify({
      created: EPOCH.toISOString(),
      architecture: "amd64",
      os: "linux",
      config: {},
      rootfs: { type: "layers", diff_ids: diffIds },
      history: opts.layers.map(() => ({ created: EPOCH.toISOString(), created_by: "buildOciImage" })),
    }),
  );
  const configDigest = await put(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: { mediaType: MEDIA_TYPES.config, digest: configDigest, size: config.length },
      layers: layerDescs,
    }),
  );
  const manifestDigest = await put(manifest);
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(
    join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: [
        {
          mediaType: MEDIA_TYPES.manifest,
          digest: manifestDigest,
          size: manifest.length,
          platform: { architecture: "amd64", os: "linux" },
          annotations: {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": opts.tag,
          },
        },
      ],
    }),
  );
  const tarPath = join(resolve(dir), `${safe}.oci.tar`);
  tarCreate({ sync: true, file: tarPath, cwd: layout, portable: true, mtime: EPOCH }, [
    "oci-layout",
    "index.json",
    "blobs",
  ]);
  return {
    tarPath,
    ref,
    manifestDigest,
    configDigest,
    layerDigests: layerDescs.map((l) => l.digest),
    diffIds,
    blobs,
  };
}

/**
 * Writes `<certsDir>/<registry>/hosts.toml` (containerd's `--hosts-dir` / `config_path` format)
 * so pulls of `<registry>/...` try `mirrorUrl` first (pull only: digests, not tags), then
 * `https://<registry>`. `headers` become a `[host."<mirrorUrl>".header]` table.
 */
export async function writeHostsToml(
  certsDir: string,
  registry: string,
  mirrorUrl: string,
  headers?: Record<string, string>,
  capabilities: string[] = ["pull"],
): Promise<string> {
  const lines = [
    `server = ${q(`https://${registry}`)}`,
    "",
    `[host.${q(mirrorUrl)}]`,
    `  capabilities = [${capabilities.map(q).join(", ")}]`,
  ];
  if (headers && Object.keys(headers).length > 0) {
    lines.push("", `[host.${q(mirrorUrl)}.header]`);
    for (const [k, v] of Object.entries(headers)) lines.push(`  ${q(k)} = [${q(v)}]`);
  }
  const hostDir = join(certsDir, registry);
  await mkdir(hostDir, { recursive: true });
  const path = join(hostDir, "hosts.toml");
  await writeFile(path, `${lines.join("\n")}\n`);
  return path;
}
