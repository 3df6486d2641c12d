import { Command, Option } from "commander";
import { callDaemon, type JsonResponse } from "../api/client.js";
import { type CacheKeyInput, cacheKey, gpuKeyInput } from "../compile-cache/key.js";
import type { CacheStatus } from "../compile-cache/types.js";
import { environment, loadConfigFromProcess } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { ColdstartError, type ErrorCode, toColdstartError } from "../errors.js";
import { probeGpuFacts } from "../node/node-facts.js";
import { parseS3Uri } from "../s3/uri.js";
import { daemonEndpoint } from "./endpoint.js";
import { addIdentityOptions, type IdentityFlags, identityOf } from "./identity-options.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { EXIT, reportError } from "./report.js";

/** The node options that say how to find the GPUs (addon, NVML library, nvidia-smi, timeout). */
const GROUPS = new Set(["node", "output", "log"]);

/**
 * `coldstart cache key`: prints the compile-cache key for this node's GPUs (or the GPU given by
 * flags) and the framework identity given, so a platform team can see, script and compare keys.
 * Exit 0 with the key, 2 naming the field for a missing or malformed input.
 */
export function cacheCommand(setExit: (code: number) => void): Command {
  const cache = new Command("cache").description(
    "torch.compile caches keyed by GPU kind and software stack (docs/compile-cache.md).",
  );
  const key = addIdentityOptions(
    new Command("key").description(
      "Print the compile-cache key for this node's GPUs and the framework identity given.",
    ),
  )
    .addOption(
      new Option("--gpu-product <name>", "GPU product as GPU feature discovery spells it (default: probed)"),
    )
    .addOption(new Option("--compute-capability <x.y>", "compute capability, e.g. 9.0 (default: probed)"))
    .addOption(new Option("--driver-major <n>", "CUDA driver major version, e.g. 550 (default: probed)"));
  const byAttr = addSchemaOptions(key, GROUPS);
  key.action(async () => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(key, byAttr));
      json = config.output.json;
      const o = key.opts<
        IdentityFlags & { gpuProduct?: string; computeCapability?: string; driverMajor?: string }
      >();
      const identity = identityOf(o);
      let gpu = {
        gpuProduct: o.gpuProduct,
        computeCapability: o.computeCapability,
        driverMajor: o.driverMajor,
      };
      let source = "flags";
      if (!gpu.gpuProduct || !gpu.computeCapability || !gpu.driverMajor) {
        const { facts } = await probeGpuFacts({ ...config.node, env: environment() });
        let probed: Partial<ReturnType<typeof gpuKeyInput>>;
        try {
          probed = gpuKeyInput(facts);
        } catch (err) {
          throw new ColdstartError(
            "CS_CACHE_KEY_INVALID",
            `${(err as Error).message}: pass --gpu-product, --compute-capability and --driver-major`,
            { details: { field: "gpuProduct" } },
          );
        }
        source = facts.source;
        gpu = {
          gpuProduct: gpu.gpuProduct ?? probed.gpuProduct,
          computeCapability: gpu.computeCapability ?? (probed.computeCapability || undefined),
          driverMajor: gpu.driverMajor ?? (probed.driverMajor || undefined),
        };
      }
      const k = cacheKey({ ...identity, ...gpu } as CacheKeyInput);
      process.stdout.write(
        json
          ? `${JSON.stringify({ key: k.key, material: k.material, canonical: k.canonical, gpuFactsFrom: source })}\n`
          : `${k.key}\n`,
      );
      setExit(EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, json);
      setExit(e.code === "CS_CONFIG_INVALID" || e.code === "CS_CACHE_KEY_INVALID" ? EXIT.usage : EXIT.failed);
    }
  });
  cache.addCommand(key);
  cache.addCommand(publishCommand(setExit));
  cache.addCommand(listCommand(setExit));
  cache.addCommand(pruneCommand(setExit));
  return cache;
}

/** How `cache publish` and `cache ls` reach the daemon: as `wait` does. */
const ENDPOINT = new Set(["wait.socket", "wait.url", "wait.tokenFile", "output", "log"]);

/** Exit codes of the commands that call the daemon: 2 for the caller's mistake, 4 unreachable. */
function exitForDaemon(code: string): number {
  if (code === "CS_DAEMON_UNREACHABLE") return 4;
  return USAGE_CODES.has(code) ? EXIT.usage : EXIT.failed;
}
const USAGE_CODES = new Set([
  "CS_CONFIG_INVALID",
  "CS_CACHE_KEY_INVALID",
  "CS_CACHE_NOT_FOUND",
  "CS_CACHE_NO_REMOTE",
  "CS_UNAUTHORIZED",
  "CS_REQUEST_INVALID",
]);

async function askDaemon(config: Config, method: string, path: string): Promise<JsonResponse> {
  const ep = await daemonEndpoint(config.wait);
  try {
    // A publish packs and uploads: allow it the time a large cache needs.
    return await callDaemon(ep, method, path, method === "POST" ? {} : undefined, { timeoutMs: 3_600_000 });
  } catch (err) {
    throw new ColdstartError(
      "CS_DAEMON_UNREACHABLE",
      `cannot reach the daemon at ${ep.url ?? ep.socketPath}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

function errorOf(res: JsonResponse): ColdstartError {
  const e = (res.body as { error?: { code?: string; message?: string } } | undefined)?.error;
  return new ColdstartError(
    (e?.code ?? "CS_INTERNAL") as ErrorCode,
    e?.message ?? `daemon answered ${res.status}`,
  );
}

/**
 * `coldstart cache publish <key>`: asks the node's daemon to publish a keyed directory now (a
 * preStop hook, or a job that warmed the engine), instead of waiting for the quiet period.
 */
function publishCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("publish")
    .description("Publish this node's compile cache KEY to the shared store now (first complete cache wins).")
    .argument("<key>", "the key, e.g. from COLDSTART_COMPILE_CACHE_KEY in the env file");
  const byAttr = addSchemaOptions(cmd, ENDPOINT);
  cmd.action(async (key: string) => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      json = config.output.json;
      const res = await askDaemon(config, "POST", `/v1/compile-caches/${encodeURIComponent(key)}/publish`);
      const body = res.body as {
        outcome?: string;
        files?: number;
        bytes?: number;
        packBytes?: number;
        seconds?: number;
      };
      if (res.status !== 200) throw errorOf(res);
      process.stdout.write(
        json
          ? `${JSON.stringify(body)}\n`
          : `${key}: ${body.outcome} (${body.files} files, ${body.bytes} bytes, packed ${body.packBytes}, ${body.seconds}s)\n`,
      );
      setExit(body.outcome === "too_large" ? EXIT.failed : EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, json);
      setExit(exitForDaemon(e.code));
    }
  });
  return cmd;
}

/** `coldstart cache ls`: the keyed directories this node holds (GET /v1/compile-caches). */
function listCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("ls").description(
    "List this node's compile caches: key, size, origin, remote state.",
  );
  const byAttr = addSchemaOptions(cmd, ENDPOINT);
  cmd.action(async () => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      json = config.output.json;
      const res = await askDaemon(config, "GET", "/v1/compile-caches");
      if (res.status !== 200) throw errorOf(res);
      const { caches } = res.body as { caches: CacheStatus[] };
      if (json) process.stdout.write(`${JSON.stringify({ caches })}\n`);
      else
        for (const c of caches)
          process.stdout.write(
            `${c.key}\t${c.bytes}\t${c.files} files\t${c.origin}\tremote ${c.remote.state}\tlast used ${c.lastUsedAt}\n`,
          );
      setExit(EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, json);
      setExit(exitForDaemon(e.code));
    }
  });
  return cmd;
}

/**
 * `coldstart cache prune [--dry-run]`: removes remote caches past the retention with no hits, packs
 * no manifest names and unfinished uploads. Runs against S3 directly (a CronJob, or by hand), with
 * credentials that may delete under the prefix; the daemons need no such right.
 */
function pruneCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("prune")
    .description(
      "Remove remote compile caches not published or hit within the retention, and leftovers of killed publishes.",
    )
    .addOption(new Option("--dry-run", "list what would be removed, remove nothing"));
  const byAttr = addSchemaOptions(
    cmd,
    new Set([
      "s3",
      "compileCache.remote",
      "compileCache.retentionMs",
      "compileCache.uploadGraceMs",
      "output",
      "log",
    ]),
  );
  cmd.action(async () => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      json = config.output.json;
      const uri = config.compileCache.remote;
      if (!uri) {
        throw new ColdstartError(
          "CS_CONFIG_INVALID",
          "cache prune needs --compile-cache-remote s3://BUCKET/PREFIX/",
          {
            details: { field: "compileCache.remote" },
          },
        );
      }
      const dryRun = cmd.opts<{ dryRun?: boolean }>().dryRun === true;
      // The SDK and lib-storage load for this subcommand only, not for every `coldstart` start.
      const { applyPrune, planPrune } = await import("../compile-cache/prune.js");
      const { compileCacheClient, RemoteStore } = await import("../compile-cache/remote.js");
      const client = compileCacheClient(config);
      try {
        const store = new RemoteStore(client, parseS3Uri(uri, "compileCache.remote"));
        const plan = await planPrune(store, {
          retentionMs: config.compileCache.retentionMs,
          uploadGraceMs: config.compileCache.uploadGraceMs,
          now: Date.now(),
        });
        const done = dryRun ? [] : await applyPrune(store, plan);
        if (json) {
          process.stdout.write(`${JSON.stringify({ ...plan, dryRun, removed: done.length })}\n`);
        } else {
          const verb = dryRun ? "would remove" : "removed";
          for (const a of plan.actions)
            process.stdout.write(
              `${verb} ${a.kind} ${a.cacheKey} (${a.objects.length} objects, ${a.bytes} bytes, last activity ${a.lastActivity})\n`,
            );
          process.stdout.write(
            `${plan.actions.length} to remove, ${plan.kept.length} caches kept under ${plan.remote}${dryRun ? " (dry run)" : ""}\n`,
          );
        }
      } finally {
        client.destroy();
      }
      setExit(EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err, "CS_S3_REQUEST_FAILED");
      reportError(e, json);
      setExit(
        e.code === "CS_CONFIG_INVALID" || e.code === "CS_SOURCE_URI_INVALID" ? EXIT.usage : EXIT.failed,
      );
    }
  });
  return cmd;
}
