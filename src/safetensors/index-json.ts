/**
 * model.safetensors.index.json: the map from tensor name to shard file that sharded Hugging Face checkpoints
 * carry, checked on its own and against the headers of the shards it names.
 */
import { z } from "zod";
import { ColdstartError } from "../errors.js";
import type { SafetensorsHeader, TensorInfo } from "./header.js";
import { findDuplicateJsonKey } from "./header.js";

/** A parsed index. */
export interface SafetensorsIndex {
  /** metadata.total_size: bytes of tensor data over all shards (headers excluded), when the index gives it. */
  totalSize: number | undefined;
  /** Tensor name -> shard file name (a bare file name, next to the index). */
  weightMap: Map<string, string>;
}

const DEFAULT_LABEL = "model.safetensors.index.json";

// Unknown keys are tolerated at both levels: writers add their own (e.g. metadata.format, total_parameters).
const indexSchema = z.looseObject({
  metadata: z
    .looseObject({
      total_size: z.number().nonnegative().optional(),
    })
    .nullish(),
  weight_map: z.record(z.string(), z.string()),
});

/**
 * Parses and validates the text of an index: JSON without repeated keys, `weight_map` a non-empty object of
 * strings, every shard a bare file name (one path component: not empty, not "." or "..", no "/", "\\" or
 * NUL), `metadata.total_size` a non-negative number when present. `key` names the file in messages.
 */
/**
 * The largest index coldstart reads (it is held in memory whole). Published models' indexes are
 * well under 10 MB (one line per tensor); this bounds what a broken or hostile one can cost.
 */
export const MAX_INDEX_BYTES = 64 * 1024 * 1024;

/** Refuses an index file larger than MAX_INDEX_BYTES before it is read. */
export function checkIndexSize(bytes: number, key?: string): void {
  if (bytes > MAX_INDEX_BYTES) {
    throw invalid(
      key ?? DEFAULT_LABEL,
      key,
      `is ${bytes} bytes, more than the ${MAX_INDEX_BYTES} an index may have`,
    );
  }
}

export function parseSafetensorsIndex(text: string, key?: string): SafetensorsIndex {
  const label = key ?? DEFAULT_LABEL;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw invalid(label, key, `not valid JSON: ${err instanceof Error ? err.message : String(err)}`, err);
  }
  const result = indexSchema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.map(String).join(".") : "top level";
    throw invalid(label, key, `${where}: ${issue?.message ?? "invalid"}`, result.error);
  }
  const duplicate = findDuplicateJsonKey(text);
  if (duplicate !== undefined) {
    throw invalid(label, key, `duplicate key ${duplicate.map((k) => JSON.stringify(k)).join(" > ")}`);
  }
  // Read the entries from the JSON.parse result, not zod's copy: a "__proto__" tensor name must stay a key.
  const rawMap = (parsed as { weight_map: Record<string, string> }).weight_map;
  const weightMap = new Map(Object.entries(rawMap));
  if (weightMap.size === 0) throw invalid(label, key, "weight_map is empty");
  for (const [tensor, shard] of weightMap) {
    const problem = unsafeFileName(shard);
    if (problem !== undefined) {
      throw invalid(
        label,
        key,
        `weight_map[${JSON.stringify(tensor)}] = ${JSON.stringify(shard)} is not a bare shard file name: ${problem}`,
      );
    }
  }
  return { totalSize: result.data.metadata?.total_size, weightMap };
}

/** What the index check needs of a shard's header (a SafetensorsHeader is one). */
export interface ShardTensors {
  tensors: readonly Pick<TensorInfo, "name" | "begin" | "end">[];
}

/** The part of a validated header the index check needs, and no more (a model's shards are held
 * until its index is checked: names and offsets only, not shapes). */
export function shardTensors(header: SafetensorsHeader): ShardTensors {
  return { tensors: header.tensors.map(({ name, begin, end }) => ({ name, begin, end })) };
}

/**
 * Checks an index against its shards' headers (`shards`: shard file name -> parsed header): every shard the
 * index names is present; every tensor of every shard is in the map, under that shard; every tensor of the
 * map is in a shard; and `total_size`, when present, equals the sum of the shards' tensor byte lengths (the
 * meaning huggingface_hub's and transformers' sharding code give it: tensor data only, headers excluded).
 */
export function checkIndexAgainstShards(
  index: SafetensorsIndex,
  shards: ReadonlyMap<string, ShardTensors>,
  key?: string,
): void {
  const label = key ?? DEFAULT_LABEL;
  const fail = (message: string): never => {
    throw invalid(label, key, message);
  };

  for (const [tensor, shard] of index.weightMap) {
    if (!shards.has(shard)) {
      fail(`shard ${JSON.stringify(shard)} (named for tensor ${JSON.stringify(tensor)}) is missing`);
    }
  }

  const found = new Map<string, string>();
  let dataBytes = 0;
  for (const [shard, header] of shards) {
    for (const t of header.tensors) {
      const name = JSON.stringify(t.name);
      const other = found.get(t.name);
      if (other !== undefined) {
        fail(`tensor ${name} is in both ${JSON.stringify(other)} and ${JSON.stringify(shard)}`);
      }
      found.set(t.name, shard);
      const mapped = index.weightMap.get(t.name);
      if (mapped === undefined) fail(`tensor ${name} in shard ${JSON.stringify(shard)} is not in weight_map`);
      if (mapped !== shard) {
        fail(
          `weight_map puts tensor ${name} in ${JSON.stringify(mapped)} but it is in ${JSON.stringify(shard)}`,
        );
      }
      dataBytes += t.end - t.begin;
    }
  }

  for (const [tensor, shard] of index.weightMap) {
    if (!found.has(tensor)) {
      fail(
        `tensor ${JSON.stringify(tensor)} is in weight_map (shard ${JSON.stringify(shard)}) but in no shard`,
      );
    }
  }

  if (index.totalSize !== undefined && index.totalSize !== dataBytes) {
    fail(`metadata.total_size is ${index.totalSize} but the shards hold ${dataBytes} bytes of tensor data`);
  }
}

/** Why `name` is not a single safe path component, or undefined when it is. */
function unsafeFileName(name: string): string | undefined {
  if (name === "") return "empty";
  if (name === "." || name === "..") return "a directory reference";
  if (name.includes("/") || name.includes("\\")) return "contains a path separator";
  if (name.includes("\0")) return "contains NUL";
  return undefined;
}

function invalid(label: string, key: string | undefined, message: string, cause?: unknown): ColdstartError {
  return new ColdstartError("CS_SAFETENSORS_INDEX_INVALID", `${label}: ${message}`, {
    cause,
    details: key === undefined ? {} : { key },
  });
}
