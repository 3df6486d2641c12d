/**
 * Composition root of `coldstart daemon`: validate, wire, listen. No logic of its own beyond the
 * order things start and stop in.
 */
import { readFileSync } from "node:fs";
import { chmod, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Logger } from "pino";
import { buildApp } from "./api/app.js";
import { TokenFile } from "./api/auth.js";
import { buildMetricsApp } from "./api/metrics-app.js";
import { buildMirrorApp } from "./api/mirror-app.js";
import { CompileCacheManager } from "./compile-cache/cache-manager.js";
import { gpuKeyInput } from "./compile-cache/key.js";
import { compileCacheClient, RemoteStore } from "./compile-cache/remote.js";
import { environment } from "./config/load.js";
import type { Config } from "./config/schema.js";
import { ColdstartError } from "./errors.js";
import { loadKubeConfig, NodeLabeler } from "./kube/node-labels.js";
import { createLogger } from "./log.js";
import { Metrics } from "./metrics/metrics.js";
import { checkContainerd, MIRROR_CHECK_CODES, type MirrorCheck } from "./mirror/containerd-check.js";
import { containerdImages } from "./mirror/containerd-images.js";
import { ContentStore } from "./mirror/content-store.js";
import { type ManagedHosts, manageHostsToml } from "./mirror/hosts-toml.js";
import { BlobRelay } from "./mirror/relay.js";
import { TagResolver } from "./mirror/tags.js";
import { ModelManager } from "./models/model-manager.js";
import { ModelRegistry } from "./models/model-registry.js";
import {
  collectNodeFacts,
  factLabels,
  type NodeFacts,
  nodeFactsOptions,
  nodePolicy,
  policyViolations,
  publishNodeFacts,
} from "./node/node-facts.js";
import { PeerDirectory } from "./peers/discovery.js";
import { PeerAwareSource } from "./peers/peer-source.js";
import { parseS3Uri } from "./s3/uri.js";
import { RateLimiter } from "./staging/rate-limiter.js";
import { SlotScheduler } from "./staging/scheduler.js";
import { partWorkersFor } from "./staging/workers/pool.js";
import { rateLimiterFrom, s3SourceFromConfig, stageSettingsFrom } from "./wiring/staging.js";

const VERSION = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
).version;

export interface Daemon {
  /** Where each listener ended up (ports resolved when configured as 0). */
  addresses: { api: string; metrics: string; socket: string; mirror?: string | undefined };
  manager: ModelManager;
  compileCaches: CompileCacheManager;
  /**
   * Graceful stop: readiness false, no new work, running jobs get `graceMs` to finish (then abort,
   * journals kept), listeners closed. Aborting `hurry` (a second SIGTERM) skips the wait.
   */
  stop(graceMs: number, hurry?: AbortSignal): Promise<void>;
}

export async function startDaemon(
  config: Config,
  // Redacting (src/log.ts), and without a component of its own: each component's child names its own.
  logger: Logger = createLogger(config.log.level),
): Promise<Daemon> {
  const log = logger.child({ component: "daemon" });
  const d = config.daemon;
  const [host, portText] = splitHostPort(d.listen);
  if (d.auth === "none" && !isLoopback(host)) {
    throw new ColdstartError(
      "CS_CONFIG_INVALID",
      `daemon.auth none is for local demos only; refusing to listen on ${d.listen}`,
      {
        details: { field: "daemon.auth", value: d.auth },
      },
    );
  }
  if (d.auth === "token" && !d.tokenFile) {
    throw new ColdstartError("CS_CONFIG_INVALID", "daemon.auth token needs daemon.tokenFile (--token-file)", {
      details: { field: "daemon.tokenFile" },
    });
  }
  // Node facts first: gds.mode on and placement.require refuse to start before anything listens.
  const factsOptions = nodeFactsOptions(config);
  let facts = await collectNodeFacts(factsOptions);
  const violation = policyViolations(facts, nodePolicy(config))[0];
  if (violation) throw violation;
  logNodeFacts(log, facts);
  // Opened next: nothing else has started yet if the state is unreadable.
  const registry = await ModelRegistry.open(d.root);
  const tokens = d.auth === "token" && d.tokenFile ? new TokenFile(d.tokenFile, { logger }) : undefined;
  const metrics = new Metrics();
  const s3 = s3SourceFromConfig(config, { metrics });
  // With peers, a staging job asks them for verified pieces first; S3 stays the authority.
  const peers =
    config.peers.urls.length || config.peers.dns
      ? new PeerDirectory({
          static: config.peers.urls,
          dnsName: config.peers.dns,
          self: config.peers.selfAddress,
          logger: logger.child({ component: "peers" }),
        })
      : undefined;
  await peers?.start();
  const source = peers
    ? new PeerAwareSource(s3, {
        urls: () => peers.urls(),
        token: () => tokens?.first,
        timeoutMs: config.peers.timeoutMs,
        maxInFlight: config.peers.maxInFlight,
        maxInFlightPerPeer: config.peers.maxInFlightPerPeer,
        logger: logger.child({ component: "peers" }),
        metrics,
      })
    : s3;
  // The byte path: parts are received, hashed and written on these threads, not the event loop's.
  const workers = partWorkersFor(config.download.workers);
  let labeler: NodeLabeler | undefined;
  try {
    labeler = nodeLabeler(config, logger, log);
  } catch (err) {
    tokens?.close();
    peers?.stop();
    source.close();
    await workers?.close();
    throw err;
  }
  let ready = false;
  // One client for every compile-cache remote, made on first use: a node without one opens nothing.
  let ccClient: ReturnType<typeof compileCacheClient> | undefined;
  const remotes = new Map<string, RemoteStore>();
  const compileCaches = new CompileCacheManager({
    root: d.root,
    config,
    remoteFor: (uri) => {
      let store = remotes.get(uri);
      if (!store) {
        ccClient ??= compileCacheClient(config);
        store = new RemoteStore(ccClient, parseS3Uri(uri, "compileCache.remote"));
        remotes.set(uri, store);
      }
      return store;
    },
    gpu: () => gpuKeyInput(facts.gpus),
    logger: logger.child({ component: "compile-cache" }),
    metrics,
    nodeName: config.kube.nodeName,
    version: VERSION,
  });
  const manager: ModelManager = new ModelManager({
    root: d.root,
    registry,
    source,
    scheduler: new SlotScheduler(config.download.concurrency),
    rateLimiter: rateLimiterFrom(config.download),
    stage: stageSettingsFrom(config.download),
    spreadParts: peers !== undefined,
    runPart: workers?.run,
    config,
    logger: logger.child({ component: "models" }),
    metrics,
    onReadyChanged: (ids) => labeler?.set(ids),
    onStateChanged: () => {
      for (const [state, n] of Object.entries(manager.countByState())) metrics.models.set({ state }, n);
    },
    extra: compileCaches,
  });
  // Anything that fails from here on must undo what started, or a half-started daemon keeps
  // serving (and staging) while its command reports failure and never exits.
  publishNodeFacts(metrics, facts);
  const contentStore = config.mirror.listen
    ? new ContentStore(
        config.mirror.contentDir ??
          join(config.node.hostRoot, "var/lib/containerd/io.containerd.content.v1.content"),
      )
    : undefined;
  // containerd's Images API, for tags (this node's mirror and peers' questions).
  const images = config.mirror.containerdSocket
    ? containerdImages(config.mirror.containerdSocket, config.mirror.containerdNamespace)
    : undefined;
  const deps = {
    manager,
    compileCaches,
    contentStore,
    images,
    logger,
    metrics,
    tokens,
    bodyLimitBytes: d.bodyLimitBytes,
    isReady: () => ready,
    nodeFacts: () => facts,
    mirrorCheck: () => mirrorCheck,
    peerUploadLimiter:
      config.peers.maxUploadBytesPerSecond > 0
        ? new RateLimiter(config.peers.maxUploadBytesPerSecond)
        : undefined,
  };
  const api = buildApp(deps, "tcp");
  const mirrorApp = contentStore
    ? buildMirrorApp({
        store: contentStore,
        relay: peers
          ? new BlobRelay({
              urls: () => peers.urls(),
              token: () => tokens?.first,
              timeoutMs: config.peers.timeoutMs,
              logger: logger.child({ component: "mirror" }),
            })
          : undefined,
        tags: config.mirror.resolveTags
          ? new TagResolver({
              local: images,
              urls: () => peers?.urls() ?? [],
              token: () => tokens?.first,
              timeoutMs: config.peers.timeoutMs,
              logger: logger.child({ component: "mirror" }),
            })
          : undefined,
        registries: config.mirror.registries,
        tokens,
        logger,
        metrics,
      })
    : undefined;
  const sock = buildApp(deps, "socket");
  const metricsApp = buildMetricsApp({ ...deps, metrics });
  const undo = async () => {
    await managedHosts?.restore().catch(() => {});
    await manager.drain(0).catch(() => {});
    await compileCaches.stop();
    ccClient?.destroy();
    await Promise.allSettled([api.close(), sock.close(), metricsApp.close(), mirrorApp?.close()]);
    labeler?.close();
    tokens?.close();
    peers?.stop();
    images?.close();
    source.close();
    await workers?.close();
  };
  let apiAddress: string;
  let metricsAddress: string;
  let mirrorAddress: string | undefined;
  let mirrorCheck: MirrorCheck | undefined;
  let mirrorTimer: NodeJS.Timeout | undefined;
  let managedHosts: ManagedHosts | undefined;
  try {
    await manager.start();
    await compileCaches.start();
    // After the manager has told the labeler which models are ready: a sync before that would see no
    // ready models and strip the node's model labels on every restart.
    labeler?.setFacts(factLabels(facts));
    apiAddress = await listen(() => api.listen({ host, port: Number(portText) }), "daemon.listen", d.listen);
    const [mHost, mPort] = splitHostPort(d.metricsListen);
    metricsAddress = await listen(
      () => metricsApp.listen({ host: mHost, port: Number(mPort) }),
      "daemon.metricsListen",
      d.metricsListen,
    );
    if (mirrorApp && config.mirror.listen) {
      const [mh, mp] = splitHostPort(config.mirror.listen);
      mirrorAddress = await listen(
        () => mirrorApp.listen({ host: mh, port: Number(mp) }),
        "mirror.listen",
        config.mirror.listen,
      );
      // Whether containerd will ask the mirror at all; looked at again every 5 minutes (the GPU
      // Operator may rewrite the config after the daemon starts).
      // The port actually bound (mirror.listen may say 0).
      const bound = mirrorAddress ?? config.mirror.listen;
      const listenPort = Number(bound.slice(bound.lastIndexOf(":") + 1));
      const check = async () => {
        const c = await checkContainerd({
          hostRoot: config.node.hostRoot,
          registries: config.mirror.registries,
          resolveTags: config.mirror.resolveTags,
          mirrorPort: listenPort,
        });
        if (c.status !== mirrorCheck?.status) {
          for (const p of c.problems) log.warn({ code: p.code }, p.message);
          if (c.status === "ok") log.info({ certsDir: c.certsDir }, "containerd uses the mirror");
        }
        mirrorCheck = c;
        for (const code of MIRROR_CHECK_CODES)
          metrics.mirrorConfigProblems.set({ code }, c.problems.some((p) => p.code === code) ? 1 : 0);
      };
      await check();
      if (config.mirror.manageHostsToml) {
        const certsDir = mirrorCheck?.certsDir;
        if (!certsDir) {
          log.error(
            { codes: mirrorCheck?.problems.map((p) => p.code) },
            "mirror.manageHostsToml: containerd has no registry config_path to write hosts.toml under",
          );
        } else {
          managedHosts = await manageHostsToml({
            certsDir,
            registries: config.mirror.registries,
            mirrorUrl: `http://${config.mirror.hostAddress}:${listenPort}`,
            token: tokens?.first,
            resolve: config.mirror.resolveTags,
          });
          log.info({ files: managedHosts.files }, "hosts.toml now sends pulls to this mirror first");
          await check();
        }
      }
      mirrorTimer = setInterval(() => check().catch(() => {}), 5 * 60_000);
      mirrorTimer.unref();
    }
    await mkdir(dirname(d.socketPath), { recursive: true, mode: 0o750 });
    await rm(d.socketPath, { force: true }); // a socket file left by a killed predecessor
    await listen(() => sock.listen({ path: d.socketPath }), "daemon.socketPath", d.socketPath);
    await chmod(d.socketPath, 0o660);
  } catch (err) {
    await undo();
    throw err;
  }

  const refreshDisk = async () => {
    const disk = await manager.disk();
    metrics.rootFreeBytes.set(disk.freeBytes);
    metrics.rootUsedBytes.set(disk.modelBytes);
    metrics.compileCacheLocalBytes.set(compileCaches.localBytes());
    await manager.enforceWatermarks();
  };
  const timer = setInterval(
    () => refreshDisk().catch((e) => log.error({ err: String(e) }, "disk check")),
    30_000,
  );
  timer.unref();
  // A daemon that starts before the GPU Operator has loaded the driver and nvidia-fs (minutes into a
  // node's life) would otherwise keep "no GPU" or "unavailable" for good. Until GDS is enabled, look
  // again: every minute for half an hour, then every ten. Cheap: file reads and NVML; cuFile (CUDA
  // contexts on every GPU) runs again only when nvidia-fs, cufile.json or the GPUs changed.
  const stopProbing = new AbortController();
  const startedAt = Date.now();
  const reprobe = () => {
    if (stopProbing.signal.aborted) return;
    const delay = Date.now() - startedAt < 30 * 60_000 ? 60_000 : 10 * 60_000;
    setTimeout(() => {
      if (facts.gds.verdict === "enabled" && facts.gpus.gpus.length > 0) return;
      collectNodeFacts(factsOptions, { previous: facts, signal: stopProbing.signal })
        .then((next) => {
          if (stopProbing.signal.aborted) return;
          const changed =
            next.gds.verdict !== facts.gds.verdict || next.gpus.gpus.length !== facts.gpus.gpus.length;
          facts = next;
          publishNodeFacts(metrics, facts);
          labeler?.setFacts(factLabels(facts));
          if (changed) logNodeFacts(log, next);
        })
        .catch((e) => log.error({ err: String(e) }, "node facts"))
        .finally(reprobe);
    }, delay).unref();
  };
  reprobe();
  // Like the timer's passes, the first one only logs: a full disk must not half-start the daemon.
  await refreshDisk().catch((e) => log.error({ err: String(e) }, "disk check"));
  ready = true;
  log.info(
    { api: apiAddress, metrics: metricsAddress, mirror: mirrorAddress, socket: d.socketPath, root: d.root },
    "coldstart daemon ready",
  );

  return {
    addresses: { api: apiAddress, metrics: metricsAddress, socket: d.socketPath, mirror: mirrorAddress },
    manager,
    compileCaches,
    async stop(graceMs, hurry) {
      ready = false;
      clearInterval(timer);
      clearInterval(mirrorTimer);
      // containerd goes back to the node's own hosts.toml (and the registry) while no mirror runs.
      await managedHosts?.restore().catch((e) => log.error({ err: String(e) }, "restoring hosts.toml"));
      stopProbing.abort();
      await Promise.all([manager.drain(graceMs, hurry), compileCaches.stop()]);
      ccClient?.destroy();
      // Long-polls are cut: waiters reconnect (with retries) to the next daemon.
      await Promise.allSettled([api.close(), sock.close(), metricsApp.close(), mirrorApp?.close()]);
      await labeler?.flush().catch(() => {});
      labeler?.close();
      tokens?.close();
      peers?.stop();
      images?.close();
      source.close();
      await workers?.close();
      log.info("coldstart daemon stopped");
    },
  };
}

/** One info line with the verdict and loader, and a warning per placement problem. */
function logNodeFacts(logger: Logger, facts: NodeFacts): void {
  const p = facts.placement;
  logger.info(
    {
      gds: facts.gds.verdict,
      loadFormat: facts.gds.loadFormat,
      reasons: facts.gds.reasons.map((r) => r.code),
      gpus: facts.gpus.gpus.length,
      gpuProduct: facts.gpus.product,
      placement: p.placement,
      native: facts.native.available,
    },
    "node facts",
  );
  for (const w of p.warnings) logger.warn({ code: w.code, root: p.path }, w.message);
  if (!facts.native.available) logger.warn({ reason: facts.native.reason }, "native addon unavailable");
}

function nodeLabeler(config: Config, logger: Logger, log: Logger): NodeLabeler | undefined {
  const { nodeName, labels, kubeconfig } = config.kube;
  if (labels === "off") return undefined;
  const kc = nodeName ? loadKubeConfig(environment(), kubeconfig) : undefined;
  if (!nodeName || !kc) {
    if (labels === "on") {
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        "kube.labels on needs kube.nodeName and Kubernetes credentials",
        {
          details: { field: "kube.labels", value: labels },
        },
      );
    }
    log.info("node labels off: no node name or no Kubernetes credentials");
    return undefined;
  }
  return new NodeLabeler({ nodeName, kubeConfig: kc, logger: logger.child({ component: "labels" }) });
}

/** A listen() whose address problems are configuration errors naming the option. */
async function listen(start: () => Promise<string>, field: string, value: string): Promise<string> {
  try {
    return await start();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE" || code === "EADDRNOTAVAIL" || code === "EACCES") {
      throw new ColdstartError("CS_CONFIG_INVALID", `${field} ${value} cannot be used: ${code}`, {
        cause: e,
        details: { field, value },
      });
    }
    throw e;
  }
}

function splitHostPort(hp: string): [string, string] {
  const i = hp.lastIndexOf(":");
  return [hp.slice(0, i).replace(/^\[|\]$/g, ""), hp.slice(i + 1)];
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}
