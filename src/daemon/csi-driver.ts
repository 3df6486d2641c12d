/**
 * The CSI driver as a daemon component: its published volumes found again and their models held
 * (`recover`, before anything may evict), then its gRPC services served (`serve`, once the models
 * are started). src/csi/ has the driver itself.
 */
import { hostname } from "node:os";
import type { Logger } from "pino";
import type { Config } from "../config/schema.js";
import { AccessPolicy, parseAccessRule } from "../csi/access.js";
import type { LoaderAdvice } from "../csi/advice.js";
import { SystemMounter } from "../csi/mounts.js";
import { type CacheVolumes, CsiNode, type ModelVolumes } from "../csi/node-service.js";
import { type CsiServer, startCsiServer } from "../csi/server.js";
import { VolumeStore } from "../csi/volumes.js";
import type { Metrics } from "../metrics/metrics.js";
import type { PageCacheWarmer } from "../models/page-cache.js";

export interface CsiDriver {
  /** Starts the gRPC services (and the kubelet registration, when configured). */
  serve(o: { ready: () => boolean }): Promise<CsiServer>;
}

export async function recoverCsiDriver(o: {
  config: Pick<Config, "csi" | "kube" | "daemon">;
  models: ModelVolumes;
  caches?: CacheVolumes | undefined;
  advice: () => LoaderAdvice;
  pageCache?: Pick<PageCacheWarmer, "warm"> | undefined;
  version: string;
  logger: Logger;
  metrics?: Metrics | undefined;
}): Promise<CsiDriver> {
  const c = o.config.csi;
  const socketPath = c.socketPath as string;
  const logger = o.logger.child({ component: "csi" });
  const node = new CsiNode({
    root: o.config.daemon.root,
    kubeletDir: c.kubeletDir,
    nodeId: o.config.kube.nodeName ?? hostname(),
    models: o.models,
    caches: o.caches,
    volumes: await VolumeStore.open(o.config.daemon.root),
    mounter: new SystemMounter(),
    // The schema checked each rule's form.
    access: new AccessPolicy(c.allow.flatMap((r) => parseAccessRule(r) ?? [])),
    publishWaitMs: c.publishWaitMs,
    advice: o.advice,
    pageCache: o.pageCache,
    logger,
    metrics: o.metrics,
  });
  await node.recover();
  return {
    serve: ({ ready }) =>
      startCsiServer(node, {
        socketPath,
        registrationDir: c.registrationDir,
        version: o.version,
        ready,
        logger,
      }),
  };
}
