/**
 * Who races to the ceiling, how each is found, versioned and invoked. Every contender gets the same
 * endpoint, bucket, prefix and dummy credentials, and an environment built from scratch (an empty
 * HOME, no AWS or rclone config of the machine's), so nothing on the machine tunes one of them.
 */
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { awsCopyArgs, tryRun } from "../lab/tools.js";
import type { Protocol } from "./origin.js";

const ROOT = resolve(import.meta.dirname, "../..");

export interface Target {
  protocol: Protocol;
  endpoint: string;
  bucket: string;
  /** Key prefix, ending in "/". */
  prefix: string;
  dest: string;
  /** The origin's CA (PEM), for HTTPS. */
  caFile: string;
}

export interface Contender {
  /** Stable id, for --tools. */
  id: string;
  /** How it is named in the results, settings included. */
  name: string;
  /** A short name, for the chart's legend. */
  short: string;
  version: string;
  /**
   * `node`: a Node program, run with bench/lib/report-usage.mjs and thread-usage.mjs preloaded (its
   * own CPU and VmHWM, and its main thread's CPU). `external`: run under GNU time (the command's and
   * its children's CPU, the largest process's peak RSS).
   */
  kind: "node" | "external";
  /** The program and its arguments (for `node`, the script and its arguments). */
  command: (t: Target) => [string, string[]];
}

export const CONTENDER_IDS = ["coldstart", "rclone", "aws", "aws-debian", "node-ranged"] as const;

/** Every contender installed here, in the order of CONTENDER_IDS; `missing` says who is not, and why. */
export function findContenders(): { found: Contender[]; missing: string[] } {
  const found: Contender[] = [];
  const missing: string[] = [];
  const version = tryRun(process.execPath, [resolve(ROOT, "bin/coldstart.js"), "--version"]) ?? "?";
  found.push({
    id: "coldstart",
    name: "coldstart pull (defaults)",
    short: "coldstart",
    version: `coldstart ${version}`,
    kind: "node",
    command: (t) => [
      resolve(ROOT, "bin/coldstart.js"),
      ["pull", `s3://${t.bucket}/${t.prefix}`, "--dest", t.dest, "--endpoint", t.endpoint, "--path-style"],
    ],
  });
  const rclone = tryRun("rclone", ["version"]);
  if (rclone) {
    const v = rclone.split("\n")[0]?.replace(/^rclone\s+/, "") ?? "?";
    found.push({
      id: "rclone",
      // --multi-thread-cutoff 0 divides by zero in rclone 1.60 (operations.Copy): 1M puts every
      // shard on 16 streams all the same.
      name: `rclone copy (${v}, 4 transfers × 16 streams)`,
      short: "rclone",
      version: `rclone ${v}`,
      kind: "external",
      command: (t) => [
        "rclone",
        [
          "copy",
          `:s3:${t.bucket}/${t.prefix.replace(/\/$/, "")}`,
          t.dest,
          "--s3-provider=Other",
          `--s3-endpoint=${t.endpoint}`,
          "--s3-env-auth",
          "--s3-region=us-east-1",
          "--s3-force-path-style=true",
          "--s3-list-version=2",
          "--s3-no-check-bucket",
          "--transfers=4",
          "--multi-thread-streams=16",
          "--multi-thread-cutoff=1M",
          ...(t.protocol === "https" ? ["--ca-cert", t.caFile] : []),
        ],
      ],
    });
  } else missing.push("rclone (not installed: `apt-get install rclone`)");
  // The machine's aws CLI (pyenv's, called directly rather than through its shim), and Debian's.
  const aws = pyenvWhich("aws") ?? tryRun("sh", ["-c", "command -v aws"]);
  const awsCli = (id: string, bin: string, where: string) => {
    const v = tryRun(bin, ["--version"])?.split(/\s/)[0] ?? "";
    if (!v) return void missing.push(`${id} (${bin} --version fails)`);
    found.push({
      id,
      name: `aws s3 cp --recursive (${v}, ${where}, defaults)`,
      short: id === "aws" ? "aws" : "aws (Debian)",
      version: v,
      kind: "external",
      command: (t) => [
        bin,
        [...awsCopyArgs(t), ...(t.protocol === "https" ? ["--ca-bundle", t.caFile] : [])],
      ],
    });
  };
  if (aws && aws !== "/usr/bin/aws") awsCli("aws", aws, "the machine's");
  else missing.push("aws (no aws CLI on the PATH besides Debian's)");
  if (existsSync("/usr/bin/aws")) awsCli("aws-debian", "/usr/bin/aws", "Debian");
  else missing.push("aws-debian (Debian's awscli is not installed)");
  found.push({
    id: "node-ranged",
    name: "plain Node ranged GETs (32 sockets, 8 MiB; the floor)",
    short: "Node floor",
    version: `node ${process.version}`,
    kind: "node",
    command: (t) => [
      resolve(import.meta.dirname, "ranged-get.mjs"),
      [t.endpoint, t.bucket, t.prefix, t.dest, "32"],
    ],
  });
  return { found, missing };
}

/**
 * The program behind a pyenv shim, so its time is not the shim's bash and pyenv too. Asked with the
 * caller's whole environment: without it (tryRun's bare PATH) pyenv names the shim itself.
 */
function pyenvWhich(bin: string): string | null {
  try {
    return execFileSync("pyenv", ["which", bin], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    return null;
  }
}

/** The environment every contender runs with; `home` is an empty directory of the bench's. */
export function contenderEnv(home: string, caFile: string): NodeJS.ProcessEnv {
  const awsConfig = join(home, "aws-config");
  // Path-style, as every other contender is told; no other setting (the CLI's defaults).
  writeFileSync(awsConfig, "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n");
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    LANG: "C.UTF-8",
    // The origin ignores SigV4; the clients sign all the same.
    AWS_ACCESS_KEY_ID: "ceiling",
    AWS_SECRET_ACCESS_KEY: "ceiling",
    AWS_REGION: "us-east-1",
    AWS_DEFAULT_REGION: "us-east-1",
    AWS_CONFIG_FILE: awsConfig,
    AWS_SHARED_CREDENTIALS_FILE: join(home, "no-aws-credentials"),
    RCLONE_CONFIG: join(home, "no-rclone.conf"),
    // Node clients (coldstart, the floor) trust the origin's CA this way; only HTTPS asks for it.
    NODE_EXTRA_CA_CERTS: caFile,
    // Node 20 here; the image ships Node 24.
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  };
}
