/**
 * The model the ceiling bench serves: real safetensors shards of random (incompressible) F16 tensors
 * plus model.safetensors.index.json and a config, laid out like a Hugging Face checkpoint, so the
 * contenders take the product's path (coldstart validates every header and the index). Shards are
 * written in chunks and hashed as they are written: a 2 GiB model never sits in memory.
 */
import { createHash, randomFillSync } from "node:crypto";
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { buildSafetensorsHeader } from "../../src/safetensors/build.js";

export interface ModelFile {
  /** Path under the model's prefix. */
  relPath: string;
  size: number;
  sha256: string;
}

const COLS = 1024;
const TENSORS_PER_SHARD = 4;
const CHUNK = 8 << 20;

/** Writes the model under `dir`; about `totalBytes` of tensor data in `shards` shards. */
export function writeModel(dir: string, totalBytes: number, shards: number): ModelFile[] {
  // Rows of 1024 F16 values (2 KiB), the same count for every tensor.
  const rows = Math.max(1, Math.floor(totalBytes / shards / TENSORS_PER_SHARD / (COLS * 2)));
  const files: ModelFile[] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  let layer = 0;
  const chunk = Buffer.allocUnsafe(CHUNK);
  for (let s = 1; s <= shards; s++) {
    const name = `model-${String(s).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const tensors = Array.from({ length: TENSORS_PER_SHARD }, () => ({
      name: `model.layers.${layer++}.mlp.weight`,
      dtype: "F16",
      shape: [rows, COLS],
    }));
    const { header, dataBytes } = buildSafetensorsHeader(tensors, { format: "pt" });
    const path = join(dir, name);
    mkdirSync(dirname(path), { recursive: true });
    const fd = openSync(path, "w");
    const h = createHash("sha256");
    try {
      writeSync(fd, header);
      h.update(header);
      for (let left = dataBytes; left > 0; ) {
        const n = Math.min(CHUNK, left);
        const piece = chunk.subarray(0, n);
        randomFillSync(piece);
        writeSync(fd, piece);
        h.update(piece);
        left -= n;
      }
    } finally {
      closeSync(fd);
    }
    for (const t of tensors) weightMap[t.name] = name;
    totalSize += dataBytes;
    files.push({ relPath: name, size: header.length + dataBytes, sha256: h.digest("hex") });
  }
  const small: [string, unknown][] = [
    ["model.safetensors.index.json", { metadata: { total_size: totalSize }, weight_map: weightMap }],
    ["config.json", { architectures: ["LlamaForCausalLM"], hidden_size: COLS, torch_dtype: "float16" }],
  ];
  for (const [relPath, json] of small) {
    const body = Buffer.from(JSON.stringify(json, null, 2));
    writeFileSync(join(dir, relPath), body);
    files.push({ relPath, size: body.length, sha256: createHash("sha256").update(body).digest("hex") });
  }
  return files;
}
