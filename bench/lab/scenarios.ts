/**
 * What the lab downloads. Sizes: large enough that a command's fixed costs (start-up, listing, the
 * first round trips) are a few percent of its time at the default 400 Mbit/s link, small enough that
 * a whole `npm run bench:lab` (five tools, three runs; the single stream alone takes ~90 s a run)
 * stays near twenty minutes.
 */
import { randomFillSync } from "node:crypto";
import { file, type SyntheticFile, syntheticModel } from "../../test/support/synthetic-model.js";

export type Dataset = "large" | "sharded" | "small";

export interface Scenario {
  name: string;
  /** What it stands for, for the results. */
  title: string;
  dataset: Dataset;
  /** Answer 503 SlowDown to every n-th GET (through the lab's fault proxy); 0: none. */
  slowDownEvery: number;
}

export const SCENARIOS: readonly Scenario[] = [
  { name: "large", title: "one 384 MiB shard", dataset: "large", slowDownEvery: 0 },
  { name: "sharded", title: "8 × 48 MiB shards + configs", dataset: "sharded", slowDownEvery: 0 },
  { name: "small", title: "512 × 128 KiB files", dataset: "small", slowDownEvery: 0 },
  {
    name: "slowdown",
    title: "the sharded model, 1 GET in 10 answered 503",
    dataset: "sharded",
    slowDownEvery: 10,
  },
];

export interface SeededFile {
  relPath: string;
  size: number;
  sha256: string;
}

export function scenarioFiles(dataset: Dataset): SyntheticFile[] {
  switch (dataset) {
    case "large":
      return syntheticModel({ shards: 1, shardBytes: 384 << 20 }).filter((f) =>
        f.relPath.endsWith(".safetensors"),
      );
    case "sharded":
      return syntheticModel({ shards: 8, shardBytes: 48 << 20 });
    case "small":
      // Tokenizer-, config- and adapter-sized files in a few directories.
      return Array.from({ length: 512 }, (_, i) =>
        file(
          `part-${i % 8}/file-${String(i).padStart(4, "0")}.bin`,
          randomFillSync(Buffer.allocUnsafe(128 << 10)),
        ),
      );
  }
}
