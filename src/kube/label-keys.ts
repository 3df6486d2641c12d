/**
 * The names coldstart puts on a Node, apart from the code that patches them: importing these must not
 * load the Kubernetes client (the CLI's start-up, node facts).
 */
import { createHash } from "node:crypto";

/** Prefix of every label and annotation coldstart owns on a Node. */
export const LABEL_PREFIX = "coldstart.io/";
/** Prefix of the per-model labels. The labeler touches no other label. */
export const MODEL_LABEL_PREFIX = `${LABEL_PREFIX}model.`;
/** JSON `{hash: id}` of the labelled models, so a reader can map a label back to its model id. */
export const MODELS_ANNOTATION = "coldstart.io/models";
/** Value of a model label: the model is staged, verified and ready to load on this node. */
export const READY_VALUE = "ready";
/** Node label with the GDS verdict: enabled, compat or unavailable (docs/node-facts.md). */
export const GDS_LABEL = `${LABEL_PREFIX}gds`;
/** Node label with the GPU product key, e.g. NVIDIA-H100-80GB-HBM3; absent without GPUs. */
export const GPU_PRODUCT_LABEL = `${LABEL_PREFIX}gpu-product`;
/**
 * Node label while the daemon refuses the node (daemon.onRefusal serve): the setting that refuses,
 * placement.require or gds.mode. Absent on a node the daemon stages on; pods can avoid refused nodes
 * with `coldstart.io/refused DoesNotExist`.
 */
export const REFUSED_LABEL = `${LABEL_PREFIX}refused`;
/**
 * Hex characters of SHA-256 kept in a label key: 56 (224 bits), the most that fits, since the name
 * part `model.<hash>` may hold at most 63 characters. At 224 bits an accidental collision among even
 * 10^9 model ids has odds below 10^-49, and finding one on purpose costs about 2^112 hashes, so a
 * label names exactly one model id without a registry of ids.
 */
export const MODEL_HASH_HEX_CHARS = 56;

/** Label-safe, stable hash of a model id: the first 56 lowercase hex digits of SHA-256 of its UTF-8 bytes. */
export function modelHash(modelId: string): string {
  return createHash("sha256").update(modelId, "utf8").digest("hex").slice(0, MODEL_HASH_HEX_CHARS);
}

/**
 * The Node label key for a model: `coldstart.io/model.<hash>` (see {@link modelHash}). The name part
 * is 62 characters of [a-z0-9.], starts with a letter and ends alphanumeric, so it is a valid label
 * key for any id. Shell equivalent (docs/node-labels.md):
 * `printf '%s' "$MODEL_ID" | sha256sum | cut -c1-56`.
 */
export function modelLabelKey(modelId: string): string {
  return `${MODEL_LABEL_PREFIX}${modelHash(modelId)}`;
}
