/**
 * The loader advice a published model volume carries beside the model: coldstart.json and
 * coldstart.env, the facts `coldstart wait` writes into its env file, for a pod without one.
 */
import { join } from "node:path";
import type { ModelStatus } from "../models/status.js";
import { writeFileAtomic } from "../store/atomic-file.js";
import type { PublishedVolume } from "./volumes.js";

/** What a pod's loader should know of this node (the same facts `coldstart wait` writes). */
export interface LoaderAdvice {
  loadFormat: string;
  gds: string;
  gpuProduct: string;
}

export async function writeAdvice(
  v: PublishedVolume,
  status: ModelStatus,
  advice: LoaderAdvice,
  node: string,
): Promise<void> {
  const facts = {
    modelId: v.modelId,
    source: v.source,
    modelDir: "model",
    bytes: status.bytesTotal,
    files: status.filesTotal,
    readyAt: status.readyAt,
    loadFormat: advice.loadFormat,
    gds: advice.gds,
    gpuProduct: advice.gpuProduct,
    node,
  };
  await writeFileAtomic(join(v.dir, "coldstart.json"), `${JSON.stringify(facts, null, 2)}\n`);
  const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const env = [
    `COLDSTART_MODEL_ID=${quote(v.modelId)}`,
    `COLDSTART_MODEL_SUBDIR=${quote("model")}`,
    `COLDSTART_LOAD_FORMAT=${quote(advice.loadFormat)}`,
    `COLDSTART_GDS=${quote(advice.gds)}`,
    `COLDSTART_GPU_PRODUCT=${quote(advice.gpuProduct)}`,
  ];
  await writeFileAtomic(join(v.dir, "coldstart.env"), `${env.join("\n")}\n`);
}
