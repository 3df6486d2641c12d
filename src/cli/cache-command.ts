import { Command, Option } from "commander";
import { type CacheKeyInput, cacheKey, driverMajor, keyInputError } from "../compile-cache/key.js";
import { loadConfigFromProcess } from "../config/load.js";
import { ColdstartError, toColdstartError } from "../errors.js";
import { probeGpuFacts } from "../node/node-facts.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { EXIT, reportError } from "./report.js";

/** The node options that say how to find the GPUs (addon, NVML library, nvidia-smi, timeout). */
const GROUPS = new Set(["node", "output", "log"]);

interface IdentityFlags {
  torch?: string;
  torchCuda?: string;
  triton?: string;
  vllm?: string;
  extra?: string[];
  tenant?: string;
}

/**
 * The framework identity a pod declares, as flags: shared by `cache key` and (next) `wait
 * --compile-cache`, so both compute the same key from the same words.
 */
export function addIdentityOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--torch <version>", "torch version, e.g. 2.5.1 (torch.__version__)"))
    .addOption(new Option("--torch-cuda <version>", "the CUDA torch was built with (torch.version.cuda)"))
    .addOption(new Option("--triton <version>", "Triton version (triton.__version__)"))
    .addOption(new Option("--vllm <version>", "vLLM version (vllm.__version__)"))
    .addOption(
      new Option("--extra <k=v>", "another identity pair, e.g. image=sha256:…; repeatable").argParser(
        (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
      ),
    )
    .addOption(
      new Option("--tenant <name>", "keeps one tenant's caches apart in a shared bucket (a DNS label)"),
    );
}

/** The identity part of the key's input, from the flags. */
export function identityOf(
  flags: IdentityFlags,
): Omit<CacheKeyInput, "gpuProduct" | "computeCapability" | "driverMajor"> {
  // No prototype: "constructor" or "__proto__" is a key like any other, and is then refused by name.
  const extra: Record<string, string> = Object.create(null);
  for (const pair of flags.extra ?? []) {
    const at = pair.indexOf("=");
    const k = pair.slice(0, at);
    if (at <= 0) invalid("extra", pair, "KEY=VALUE");
    if (Object.hasOwn(extra, k)) invalid("extra", pair, `one value per key (${k} is given twice)`);
    extra[k] = pair.slice(at + 1);
  }
  return {
    ...(flags.torch !== undefined ? { torch: flags.torch } : {}),
    ...(flags.torchCuda !== undefined ? { torchCuda: flags.torchCuda } : {}),
    ...(flags.triton !== undefined ? { triton: flags.triton } : {}),
    ...(flags.vllm !== undefined ? { vllm: flags.vllm } : {}),
    ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}),
    extra,
  };
}

function invalid(field: string, value: string, expected: string): never {
  throw keyInputError(field, value, expected);
}

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
        const { facts } = await probeGpuFacts(config.node);
        if (facts.gpus.length === 0) {
          throw new ColdstartError(
            "CS_CACHE_KEY_INVALID",
            `compile-cache key: no GPU found on this node (${facts.notes.join("; ") || "no GPUs"}): pass --gpu-product, --compute-capability and --driver-major`,
            { details: { field: "gpuProduct" } },
          );
        }
        source = facts.source;
        gpu = {
          gpuProduct: gpu.gpuProduct ?? facts.product ?? undefined,
          computeCapability: gpu.computeCapability ?? facts.gpus[0]?.computeCapability ?? undefined,
          driverMajor: gpu.driverMajor ?? driverMajor(facts.driverVersion) ?? undefined,
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
  return cache;
}
