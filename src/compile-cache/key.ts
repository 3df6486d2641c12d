/**
 * The compile-cache key: what makes torch.compile / Inductor / Triton artifacts incompatible, in one
 * canonical, printable, stable form. The same inputs give the same key on every node; any input that
 * differs gives another key, so a mixed node pool never shares what it must not.
 *
 * What goes in (see docs/compile-cache.md and ../shared/FACTS.md): the GPU product as GPU feature
 * discovery spells it (Inductor keys on the product name, not just the compute capability: "H100 80GB
 * HBM3" and "H100 PCIe" differ), the compute capability (Triton's `sm` arch), the CUDA driver's major
 * version (in no framework key found, so in ours), the framework identity the pod declares (torch and
 * its CUDA, Triton, vLLM, free-form pairs), and an optional tenant.
 *
 * The key is `[<tenant>--]<product>-sm<cc>-drv<major>-<20 hex of SHA-256(canonical)>`: readable where
 * it helps (listing a bucket, a directory, a log line) and a hash over everything, so no two inputs
 * that differ anywhere collide in practice. It is a single path segment and S3 key segment.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { ColdstartError } from "../errors.js";
import type { GpuFacts } from "../node/gpus.js";

/** Bumped only if the canonical form changes; old keys then simply miss. */
export const KEY_VERSION = 1;

const version = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/, "a version: [A-Za-z0-9.+_-], at most 64 characters");

export const cacheKeyInputSchema = z
  .object({
    /** GPU feature discovery's spelling (`nvidia.com/gpu.product`), e.g. NVIDIA-H100-80GB-HBM3. */
    gpuProduct: z
      .string()
      .regex(/^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/, "a label-safe GPU product name")
      .refine((p) => p !== "mixed", "one GPU kind: this node has GPUs of more than one kind")
      // What node facts say when NVML gave no name: two different GPUs would share a key.
      .refine((p) => p !== "unknown", "a known GPU product: NVML gave no name (pass --gpu-product)"),
    /** "9.0" for an H100. */
    // No leading zeros: "09.0" and "9.0" must not be two keys for one GPU.
    computeCapability: z
      .string()
      .regex(/^(0|[1-9]\d?)\.(0|[1-9]\d?)$/, "MAJOR.MINOR without leading zeros, e.g. 9.0"),
    /** "550" for driver 550.54.15. */
    driverMajor: z
      .string()
      .regex(/^[1-9]\d{0,3}$/, "the driver's major version without leading zeros, e.g. 550"),
    torch: version.optional(),
    torchCuda: version.optional(),
    triton: version.optional(),
    vllm: version.optional(),
    /** Free-form identity pairs (an image digest, a build id). */
    extra: z
      .record(
        z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, "a key of [a-z0-9._-], at most 63 characters"),
        z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9.+_:@/=-]{0,127}$/, "a value of [A-Za-z0-9.+_:@/=-], at most 128"),
      )
      .default({}),
    /** Keeps one tenant's caches apart from another's in a shared bucket: a DNS label. */
    tenant: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/, "a DNS label, at most 40 characters")
      .refine((t) => !t.includes("--"), "no '--' (it separates the tenant in the key)")
      .optional(),
  })
  .strict()
  .refine((i) => i.torch !== undefined || i.vllm !== undefined || Object.keys(i.extra).length > 0, {
    message:
      "a framework identity: at least one of torch, vllm or an extra pair (artifacts of different stacks must not share a key)",
    path: ["torch"],
  });

export type CacheKeyInput = z.input<typeof cacheKeyInputSchema>;

export interface CacheKey {
  /** The key itself: a directory name under <root>/compile-cache/ and an S3 key segment. */
  key: string;
  /** The exact text hashed: one `name=value` line per input, sorted, after a version line. */
  canonical: string;
  /** The inputs by canonical name. */
  material: Record<string, string>;
}

/** Computes the key, or throws CS_CACHE_KEY_INVALID naming the field and the value. */
export function cacheKey(input: CacheKeyInput): CacheKey {
  const parsed = cacheKeyInputSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const path = issue?.path.map(String) ?? [];
    let field = path.join(".") || "input";
    let value: unknown = path.reduce<unknown>(
      (o, k) => (o && typeof o === "object" ? (o as Record<string, unknown>)[k] : undefined),
      input,
    );
    let expected = issue?.message ?? "a valid value";
    if (issue?.code === "invalid_key") {
      // A bad extra key: the key itself is the value at fault.
      value = path.at(-1);
      expected = issue.issues[0]?.message ?? expected;
    } else if (issue?.code === "unrecognized_keys") {
      field = [...path, issue.keys[0] ?? ""].filter(Boolean).join(".");
      value = undefined;
      expected =
        "no such input (known: gpuProduct, computeCapability, driverMajor, torch, torchCuda, triton, vllm, extra, tenant)";
    }
    throw keyInputError(
      field,
      value === undefined ? undefined : String(value),
      expected,
      issue?.code === "unrecognized_keys" ? "is not an input" : "is missing",
    );
  }
  const i = parsed.data;
  const material: Record<string, string> = {
    "gpu.product": i.gpuProduct,
    "gpu.compute_capability": i.computeCapability,
    "driver.major": i.driverMajor,
  };
  if (i.torch) material["framework.torch"] = i.torch;
  if (i.torchCuda) material["framework.torch_cuda"] = i.torchCuda;
  if (i.triton) material["framework.triton"] = i.triton;
  if (i.vllm) material["framework.vllm"] = i.vllm;
  for (const [k, v] of Object.entries(i.extra)) material[`extra.${k}`] = v;
  if (i.tenant) material.tenant = i.tenant;
  const lines = Object.keys(material)
    .sort()
    .map((k) => `${k}=${material[k]}`);
  const canonical = [`coldstart-compile-cache-key/v${KEY_VERSION}`, ...lines].join("\n");
  const hash = createHash("sha256").update(canonical).digest("hex").slice(0, 20);
  // Runs of separators become one "-": "--" marks the tenant and must not appear inside a product.
  const product = i.gpuProduct
    .toLowerCase()
    .replace(/[._-]+/g, "-")
    .slice(0, 40)
    .replace(/-+$/, "");
  const cc = i.computeCapability.replace(".", "");
  const key = `${i.tenant ? `${i.tenant}--` : ""}${product}-sm${cc}-drv${i.driverMajor}-${hash}`;
  return { key, canonical, material };
}

/** CS_CACHE_KEY_INVALID naming the field and, when there is one, the value at fault. */
export function keyInputError(
  field: string,
  value: string | undefined,
  expected: string,
  absent = "is missing",
): ColdstartError {
  const what = value === undefined ? absent : `${JSON.stringify(value)} is invalid`;
  return new ColdstartError(
    "CS_CACHE_KEY_INVALID",
    `compile-cache key: ${field} ${what}: expected ${expected}`,
    {
      details: { field, ...(value === undefined ? {} : { value }) },
    },
  );
}

/** "550.54.15" → "550"; null for anything that does not start with a number. */
export function driverMajor(driverVersion: string | null): string | null {
  const m = /^(\d{1,4})(\.|$)/.exec(driverVersion ?? "");
  return m ? (m[1] as string) : null;
}

/**
 * The GPU part of the key from this node's GPU facts. Throws CS_CACHE_KEY_INVALID when there is no
 * GPU to key on; a node with mixed GPUs or an unnamed one is refused by cacheKey itself, by name.
 */
export function gpuKeyInput(
  g: Pick<GpuFacts, "gpus" | "product" | "driverVersion" | "notes">,
): Pick<CacheKeyInput, "gpuProduct" | "computeCapability" | "driverMajor"> {
  if (g.gpus.length === 0) {
    throw new ColdstartError(
      "CS_CACHE_KEY_INVALID",
      `compile-cache key: no GPU found on this node (${g.notes.join("; ") || "no GPUs"})`,
      { details: { field: "gpuProduct" } },
    );
  }
  return {
    gpuProduct: g.product ?? "unknown",
    computeCapability: g.gpus[0]?.computeCapability ?? "",
    driverMajor: driverMajor(g.driverVersion) ?? "",
  };
}
