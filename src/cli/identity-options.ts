/** The framework identity flags of the compile-cache key, shared by `cache key` and `wait`. */
import { type Command, Option } from "commander";
import { type CacheKeyInput, keyInputError } from "../compile-cache/key.js";

export interface IdentityFlags {
  torch?: string;
  torchCuda?: string;
  triton?: string;
  vllm?: string;
  extra?: string[];
  tenant?: string;
}

/**
 * The framework identity a pod declares, as flags: shared by `cache key` and `wait --compile-cache`,
 * so both compute the same key from the same words.
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
