/**
 * What a CSI volume asks for, from the NodePublishVolume request: the pod's `volumeAttributes`
 * (model id, source, filters: exactly what the API's PUT takes) and the pod facts the kubelet adds
 * with `podInfoOnMount`. Every key is checked: a misspelt attribute is refused, not ignored.
 */

import type { Identity } from "../compile-cache/types.js";
import { ColdstartError } from "../errors.js";
import { validateModelId } from "../models/model-id.js";
import { normalizeS3Uri } from "../s3/uri.js";

/** The keys the kubelet sets (podInfoOnMount); its values win over a pod's own volumeAttributes. */
export const POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace";
export const POD_NAME = "csi.storage.k8s.io/pod.name";
export const POD_UID = "csi.storage.k8s.io/pod.uid";
export const POD_SERVICE_ACCOUNT = "csi.storage.k8s.io/serviceAccount.name";
export const EPHEMERAL = "csi.storage.k8s.io/ephemeral";

/** The attributes a pod may set, by volume kind (`kind`, default `model`). */
const ATTRIBUTES = {
  model: ["kind", "model", "source", "include", "exclude"],
  // No tenant: the pod's namespace is the tenant (node-service.ts), never one the pod names.
  "compile-cache": ["kind", "torch", "torchCuda", "triton", "vllm", "extra", "remote"],
} as const;

export type VolumeKind = keyof typeof ATTRIBUTES;

export interface PodInfo {
  namespace: string;
  name: string;
  uid: string;
  serviceAccount: string;
}

/** A model, read-only: what the API's PUT takes. */
export interface ModelVolumeSpec {
  kind: "model";
  modelId: string;
  /** s3://bucket/prefix/ as the API normalises it. */
  source: string;
  include: string[];
  exclude: string[];
  pod: PodInfo;
}

/**
 * The compile cache keyed by this node's GPU and the pod's framework identity, read-write: what
 * `coldstart wait --compile-cache` restores. The identity is checked by the key (CS_CACHE_KEY_INVALID).
 */
export interface CacheVolumeSpec {
  kind: "compile-cache";
  identity: Identity;
  /** Another remote than compileCache.remote (it must be in compileCache.allow). */
  remote: string | undefined;
  pod: PodInfo;
}

export type VolumeSpec = ModelVolumeSpec | CacheVolumeSpec;

/** A field of the request is missing or wrong: INVALID_ARGUMENT, naming the field and the value. */
export function invalid(field: string, value: unknown, why: string): ColdstartError {
  return new ColdstartError(
    "CS_CSI_VOLUME_INVALID",
    `${field} ${why}${value === undefined ? "" : `, got ${JSON.stringify(value)}`}`,
    { details: { field, value } },
  );
}

export function volumeSpec(context: Record<string, string>): VolumeSpec {
  const kind = context.kind ?? "model";
  if (!Object.hasOwn(ATTRIBUTES, kind)) {
    throw invalid("volumeAttributes.kind", kind, `must be one of ${Object.keys(ATTRIBUTES).join(", ")}`);
  }
  const known: readonly string[] = ATTRIBUTES[kind as VolumeKind];
  for (const key of Object.keys(context)) {
    if (!key.startsWith("csi.storage.k8s.io/") && !known.includes(key)) {
      throw invalid(
        `volumeAttributes.${key}`,
        undefined,
        `is not an attribute of a ${kind} volume (known: ${known.join(", ")})`,
      );
    }
  }
  // Only inline volumes: a PersistentVolume would outlive the pod and bypass the namespace check.
  if (context[EPHEMERAL] !== "true") {
    throw invalid(
      EPHEMERAL,
      context[EPHEMERAL],
      'must be "true": the driver serves CSI ephemeral inline volumes only, and needs the CSIDriver\'s podInfoOnMount',
    );
  }
  const namespace = context[POD_NAMESPACE];
  if (!namespace)
    throw invalid(POD_NAMESPACE, namespace, "is missing (the CSIDriver must set podInfoOnMount: true)");
  const pod = {
    namespace,
    name: context[POD_NAME] ?? "",
    uid: context[POD_UID] ?? "",
    serviceAccount: context[POD_SERVICE_ACCOUNT] ?? "",
  };
  if (kind === "compile-cache") {
    const identity: Identity = {};
    for (const f of ["torch", "torchCuda", "triton", "vllm"] as const) {
      if (context[f] !== undefined) identity[f] = context[f];
    }
    if (context.extra !== undefined) identity.extra = extraOf(context.extra);
    const remote = context.remote ? normalizeS3Uri(context.remote, "volumeAttributes.remote") : undefined;
    return { kind: "compile-cache", identity, remote, pod };
  }
  const model = context.model;
  if (!model) throw invalid("volumeAttributes.model", model, "is required: the model id");
  const source = context.source;
  if (!source) throw invalid("volumeAttributes.source", source, "is required: s3://bucket/prefix/");
  return {
    kind: "model",
    modelId: validateModelId(model),
    source: normalizeS3Uri(source, "volumeAttributes.source"),
    include: globs(context, "include"),
    exclude: globs(context, "exclude"),
    pod,
  };
}

/** `extra`: a JSON object of strings (`'{"image": "vllm/vllm-openai:v0.11.0"}'`), as wait's --extra. */
function extraOf(raw: string): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw invalid("volumeAttributes.extra", raw, "must be a JSON object of strings");
  }
  if (
    parsed === null ||
    typeof parsed !== "object" ||
    Array.isArray(parsed) ||
    !Object.values(parsed).every((v) => typeof v === "string")
  ) {
    throw invalid("volumeAttributes.extra", raw, "must be a JSON object of strings");
  }
  return parsed as Record<string, string>;
}

/**
 * include/exclude: one glob, or a JSON array of globs (`'["*.json", "*.safetensors"]'`). Not a
 * comma list: a glob's braces hold commas (`*.{json,safetensors}`).
 */
function globs(context: Record<string, string>, key: "include" | "exclude"): string[] {
  const raw = context[key];
  if (raw === undefined || raw.trim() === "") return [];
  if (!raw.trimStart().startsWith("[")) return [raw.trim()];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw invalid(`volumeAttributes.${key}`, raw, "must be one glob or a JSON array of globs");
  }
  if (!Array.isArray(parsed) || !parsed.every((g) => typeof g === "string" && g.length > 0)) {
    throw invalid(`volumeAttributes.${key}`, raw, "must be a JSON array of non-empty strings");
  }
  return parsed as string[];
}
