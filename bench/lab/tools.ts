/**
 * The contenders: how each is found, versioned and invoked. Every one gets the same bucket, prefix,
 * endpoint and credentials, and an environment built from scratch (an empty HOME, no AWS config
 * files), so nothing on the machine tunes one of them behind the lab's back.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";
import { resolve } from "node:path";
import { InvalidArgumentError } from "commander";

export interface Target {
  endpoint: string;
  bucket: string;
  /** Key prefix, ending in "/". */
  prefix: string;
  dest: string;
}

export interface Tool {
  /** Stable id, for --tools. */
  id: string;
  /** How it is named in the results, settings included. */
  name: string;
  version: string;
  command: (t: Target) => [string, string[]];
}

const ROOT = resolve(import.meta.dirname, "../..");

/** A comma-separated option value as a list (the benches' --scenarios, --tools, --protocols). */
export const list = (v: string): string[] =>
  v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

/** A whole-number option value of at least 1 (--runs and the like). */
export const count = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`expected a whole number ≥ 1, got ${v}`);
  return n;
};

/** A number option value above 0 (sizes, seconds). */
export const positive = (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected a number > 0, got ${v}`);
  return n;
};

/** `aws s3 cp --recursive` of a prefix into a directory, quiet: the part of its argv every bench shares. */
export function awsCopyArgs(t: { bucket: string; prefix: string; dest: string; endpoint: string }): string[] {
  return [
    "s3",
    "cp",
    "--recursive",
    `s3://${t.bucket}/${t.prefix}`,
    t.dest,
    "--endpoint-url",
    t.endpoint,
    "--no-progress",
    "--only-show-errors",
  ];
}

/** A command's trimmed stdout, or null if it is missing or fails. */
export function tryRun(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: process.env.PATH },
    }).trim();
  } catch {
    return null;
  }
}

/** The aws CLI: `aws s3 cp --recursive` at its default settings (10 requests, 8 MiB chunks). */
function awsCli(id: string, bin: string, where: string): Tool | null {
  const v = tryRun(bin, ["--version"]);
  if (!v) return null;
  const version = v.split(/\s/)[0] ?? v;
  return {
    id,
    name: `aws s3 cp --recursive (${version}, ${where})`,
    version,
    command: (t) => [bin, awsCopyArgs(t)],
  };
}

/** Every contender installed here, in the order they run. */
export function findTools(): Tool[] {
  const tools: (Tool | null)[] = [];
  const version = (tryRun(process.execPath, [resolve(ROOT, "bin/coldstart.js"), "--version"]) ?? "?").trim();
  tools.push({
    id: "coldstart",
    name: "coldstart pull (defaults)",
    version: `coldstart ${version}`,
    command: (t) => [
      process.execPath,
      [resolve(ROOT, "bin/coldstart.js"), "pull", `s3://${t.bucket}/${t.prefix}`, "--dest", t.dest].concat([
        "--endpoint",
        t.endpoint,
        "--path-style",
      ]),
    ],
  });
  // Debian's aws CLI v2, and whichever other aws CLI the machine has first on its PATH.
  if (existsSync("/usr/bin/aws")) tools.push(awsCli("aws-debian", "/usr/bin/aws", "Debian"));
  const other = tryRun("pyenv", ["which", "aws"]) ?? tryRun("sh", ["-c", "command -v aws"]);
  if (other && other !== "/usr/bin/aws" && other !== "/bin/aws")
    tools.push(awsCli("aws", other, "the machine's"));
  const rclone = tryRun("rclone", ["version"]);
  if (rclone) {
    const v = rclone.split("\n")[0]?.replace(/^rclone\s+/, "") ?? "?";
    tools.push({
      id: "rclone",
      // Multi-thread settings for this link: 16 streams × 40 Mbit/s reach the link on one file.
      name: `rclone copy (${v}, 16 transfers, 16 streams from 16 MiB)`,
      version: `rclone ${v}`,
      command: (t) => [
        "rclone",
        [
          "copy",
          `:s3:${t.bucket}/${t.prefix}`,
          t.dest,
          "--s3-provider=Ceph",
          `--s3-endpoint=${t.endpoint}`,
          "--s3-env-auth",
          "--s3-region=us-east-1",
          "--transfers=16",
          "--multi-thread-streams=16",
          "--multi-thread-cutoff=16M",
        ],
      ],
    });
  }
  tools.push({
    id: "naive",
    name: "naive GetObject (one stream, one file at a time)",
    version: "@aws-sdk/client-s3",
    command: (t) => [
      process.execPath,
      [resolve(ROOT, "bench/naive-get.mjs"), t.bucket, t.prefix, t.dest, t.endpoint],
    ],
  });
  return tools.filter((t): t is Tool => t !== null);
}

/** The environment every contender runs with. */
export function toolEnv(home: string, creds: { accessKeyId: string; secretAccessKey: string }) {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    LANG: "C.UTF-8",
    AWS_ACCESS_KEY_ID: creds.accessKeyId,
    AWS_SECRET_ACCESS_KEY: creds.secretAccessKey,
    AWS_REGION: "us-east-1",
    AWS_DEFAULT_REGION: "us-east-1",
    AWS_CONFIG_FILE: resolve(home, "no-aws-config"),
    AWS_SHARED_CREDENTIALS_FILE: resolve(home, "no-aws-credentials"),
    RCLONE_CONFIG: resolve(home, "no-rclone.conf"),
    // Node 20 here; the image ships Node 24.
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  };
}

/** The commit measured in `root`, marked when the tree had changes other than `results` (pathspecs). */
export function gitCommit(root: string, results: string[]): string {
  const git = (...args: string[]) => execFileSync("git", ["-C", root, ...args], { encoding: "utf8" }).trim();
  try {
    const changed = git(
      "status",
      "--porcelain",
      "--untracked-files=no",
      "--",
      ".",
      ...results.map((r) => `:!${r}`),
    );
    return `${git("rev-parse", "--short", "HEAD")}${changed ? " (with local changes)" : ""}`;
  } catch {
    return "unknown";
  }
}

/** The machine a lab ran on, for its results: CPUs, memory, kernel, Node and RGW versions. */
export function machineLine(): string {
  return [
    `${cpus().length} × ${cpus()[0]?.model.trim() ?? "?"}`,
    `${(totalmem() / 2 ** 30).toFixed(0)} GiB`,
    `Linux ${release()}`,
    `Node ${process.version}`,
    tryRun("radosgw", ["--version"])?.replace(/\s*\(.*$/, "") ?? "RGW ?",
  ].join(", ");
}
