import { createHash, randomFillSync } from "node:crypto";
import { buildSafetensorsHeader } from "../../src/safetensors/build.js";

/** A generated model file: where it goes under the model's prefix, its bytes and their SHA-256. */
export interface SyntheticFile {
  relPath: string;
  body: Buffer;
  sha256: string;
}

export interface SyntheticModelOptions {
  shards: number;
  /** Approximate bytes of tensor data per shard (rounded down to a multiple of 8 KiB). */
  shardBytes: number;
  tensorsPerShard?: number;
}

/**
 * A multi-shard safetensors model shaped like a Hugging Face checkpoint: shards with random
 * (incompressible) F16 tensors, model.safetensors.index.json, config.json, tokenizer.json and
 * generation_config.json. Used by the tests, the demo and the benchmarks.
 */
export function syntheticModel(options: SyntheticModelOptions): SyntheticFile[] {
  const tensorsPerShard = options.tensorsPerShard ?? 4;
  const cols = 1024;
  const rowsPerTensor = Math.max(1, Math.floor(options.shardBytes / tensorsPerShard / (cols * 2)));
  const files: SyntheticFile[] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  let layer = 0;
  for (let s = 1; s <= options.shards; s++) {
    const name = `model-${String(s).padStart(5, "0")}-of-${String(options.shards).padStart(5, "0")}.safetensors`;
    const tensors = Array.from({ length: tensorsPerShard }, () => ({
      name: `model.layers.${layer++}.mlp.weight`,
      dtype: "F16",
      shape: [rowsPerTensor, cols],
    }));
    const { header, dataBytes } = buildSafetensorsHeader(tensors, { format: "pt" });
    const body = Buffer.allocUnsafe(header.length + dataBytes);
    header.copy(body, 0);
    randomFillSync(body, header.length);
    for (const t of tensors) weightMap[t.name] = name;
    totalSize += dataBytes;
    files.push(file(name, body));
  }
  const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
  files.push(file("model.safetensors.index.json", Buffer.from(JSON.stringify(index, null, 2))));
  files.push(
    file(
      "config.json",
      Buffer.from(
        JSON.stringify({ architectures: ["LlamaForCausalLM"], hidden_size: cols, torch_dtype: "float16" }),
      ),
    ),
  );
  files.push(file("generation_config.json", Buffer.from(JSON.stringify({ do_sample: false }))));
  files.push(
    file(
      "tokenizer.json",
      Buffer.from(JSON.stringify({ version: "1.0", model: { type: "BPE", vocab: {} } })),
    ),
  );
  return files;
}

export function file(relPath: string, body: Buffer): SyntheticFile {
  return { relPath, body, sha256: sha256(body) };
}

export function sha256(data: Buffer | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
