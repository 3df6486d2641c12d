import type { Logger } from "pino";
import { collectNodeFacts, type NodeFacts, type NodeFactsOptions } from "../node/node-facts.js";

/**
 * The node's facts, looked at again until GDS is enabled and GPUs are seen. A daemon that starts
 * before the GPU Operator has loaded the driver and nvidia-fs (minutes into a node's life) would
 * otherwise keep "no GPU" or "unavailable" for good: every minute for half an hour, then every ten.
 * Cheap: file reads and NVML; cuFile (CUDA contexts on every GPU) runs again only when nvidia-fs,
 * cufile.json or the GPUs changed.
 */
export function reprobeNodeFacts(o: {
  options: NodeFactsOptions;
  initial: NodeFacts;
  log: Logger;
  /** Told every new set of facts (metrics, labels); `changed` when the verdict or GPU count moved. */
  onFacts: (facts: NodeFacts, changed: boolean) => void;
}): { stop: () => void } {
  const now = Date.now;
  const stopped = new AbortController();
  const startedAt = now();
  let facts = o.initial;
  let timer: NodeJS.Timeout | undefined;
  const next = () => {
    if (stopped.signal.aborted) return;
    const delay = reprobeDelayMs(now() - startedAt);
    timer = setTimeout(() => {
      if (facts.gds.verdict === "enabled" && facts.gpus.gpus.length > 0) return;
      collectNodeFacts(o.options, { previous: facts, signal: stopped.signal })
        .then((found) => {
          if (stopped.signal.aborted) return;
          const changed =
            found.gds.verdict !== facts.gds.verdict || found.gpus.gpus.length !== facts.gpus.gpus.length;
          facts = found;
          o.onFacts(found, changed);
        })
        .catch((e) => o.log.error({ err: String(e) }, "node facts"))
        .finally(next);
    }, delay);
    timer.unref();
  };
  next();
  return {
    stop: () => {
      stopped.abort();
      clearTimeout(timer);
    },
  };
}

/**
 * How long to wait before probing a node again, `elapsedMs` into the daemon's (or a refusal's) life:
 * `firstMs` (a minute) for half an hour, while drivers and disks are still arriving, then ten minutes.
 */
export function reprobeDelayMs(elapsedMs: number, firstMs = 60_000): number {
  return elapsedMs < 30 * 60_000 ? firstMs : Math.max(firstMs, 10 * 60_000);
}
