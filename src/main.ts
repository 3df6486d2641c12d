/**
 * Composition root of `coldstart daemon`: validate, wire, listen. No logic of its own beyond the
 * order things start and stop in.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import { buildApp } from "./api/app.js";
import { mirrorToken, onTokensReloaded, peerToken, TokenFile } from "./api/auth.js";
import { buildMetricsApp } from "./api/metrics-app.js";
import { buildMirrorApp } from "./api/mirror-app.js";
import { CompileCacheManager } from "./compile-cache/cache-manager.js";
import { gpuKeyInput } from "./compile-cache/key.js";
import { compileCacheClient, RemoteStore } from "./compile-cache/remote.js";
import { environment } from "./config/load.js";
import type { Config } from "./config/schema.js";
import { watchContainerd } from "./daemon/containerd-watch.js";
import { recoverCsiDriver } from "./daemon/csi-driver.js";
import { Lifecycle } from "./daemon/lifecycle.js";
import { isLoopback, listen, listenSocket, splitHostPort } from "./daemon/listen.js";
import { ModelCacheReconciler, releaseModelCachePins } from "./daemon/model-caches.js";
import { reprobeNodeFacts } from "./daemon/node-reprobe.js";
import { holdWhileRefused } from "./daemon/refusal.js";
import { ColdstartError } from "./errors.js";
import { ModelCacheStatusWriter } from "./kube/model-cache-status.js";
import { ModelCacheWatch } from "./kube/model-caches.js";
import { loadKubeConfig, NodeLabeler } from "./kube/node-labels.js";
import { createLogger } from "./log.js";
import { Metrics } from "./metrics/metrics.js";
import { containerdImages } from "./mirror/containerd-images.js";
import { ContentStore } from "./mirror/content-store.js";
import { BlobRelay } from "./mirror/relay.js";
import { TagResolver } from "./mirror/tags.js";
import { ModelManager } from "./models/model-manager.js";
import { ModelRegistry } from "./models/model-registry.js";
import { PageCacheWarmer } from "./models/page-cache.js";
import { memoryRoom, warmBudget } from "./node/memory.js";
import {
  collectNodeFacts,
  factLabels,
  type NodeFacts,
  type NodeFactsOptions,
  policyViolations,
  publishNodeFacts,
} from "./node/node-facts.js";
import { Cohorts } from "./peers/cohort.js";
import { PeerDirectory } from "./peers/discovery.js";
import { PeerAwareSource } from "./peers/peer-source.js";
import { parseS3Uri } from "./s3/uri.js";
import { RateLimiter } from "./staging/rate-limiter.js";
import { SlotScheduler } from "./staging/scheduler.js";
import { partWorkersFor } from "./staging/workers/pool.js";
import { nodeFactsOptions, nodePolicy } from "./wiring/node.js";
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

export interface StartOptions {
  /** Facts already collected and accepted (holdUntilNodeAccepted's); collected here without. */
  facts?: NodeFacts | undefined;
}

/**
 * The node's facts once the policy accepts them: at once, or (daemon.onRefusal serve) after serving
 * the refusal until a re-probe passes; undefined when `signal` aborts first. Under exit, throws.
 */
export async function holdUntilNodeAccepted(
  config: Config,
  logger: Logger,
  signal: AbortSignal,
): Promise<NodeFacts | undefined> {
  checkDaemonConfig(config);
  const options = nodeFactsOptions(config);
  const policy = nodePolicy(config);
  return holdWhileRefused(await collectNodeFacts(options), {
    config,
    logger,
    version: VERSION,
    probe: (previous, s) => collectNodeFacts(options, { previous, signal: s }),
    violations: (f) => policyViolations(f, policy),
    signal,
    labeler: () => nodeLabeler(config, kubeAccess(config), logger, logger.child({ component: "daemon" })),
  });
}

export async function startDaemon(
  config: Config,
  // Redacting (src/log.ts), and without a component of its own: each component's child names its own.
  logger: Logger = createLogger(config.log.level),
  options: StartOptions = {},
): Promise<Daemon> {
  checkDaemonConfig(config);
  const log = logger.child({ component: "daemon" });
  // Node facts first: gds.mode on and placement.require refuse to start before anything listens.
  const factsOptions = nodeFactsOptions(config);
  const facts = options.facts ?? (await collectNodeFacts(factsOptions));
  const violation = policyViolations(facts, nodePolicy(config))[0];
  if (violation) throw violation;
  logNodeFacts(log, facts);
  // Opened next: nothing else has started yet if the state is unreadable.
  const registry = await ModelRegistry.open(config.daemon.root);
  // From here on every component registers how it stops as it starts: a failed start and a shutdown
  // run those in reverse, so a half-started daemon never keeps serving while its command fails.
  const life = new Lifecycle(log);
  try {
    return await compose(config, logger, log, life, registry, facts, factsOptions);
  } catch (err) {
    await life.close({ graceMs: 0 });
    throw err;
  }
}

/** The settings that only make sense together, checked before anything probes or listens. */
function checkDaemonConfig(config: Config): void {
  const d = config.daemon;
  const [host] = splitHostPort(d.listen);
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
  // A scoped token narrows what the API token reaches; with daemon.auth none nothing is checked.
  for (const [field, path] of [
    ["peers.tokenFile", config.peers.tokenFile],
    ["mirror.tokenFile", config.mirror.tokenFile],
  ] as const) {
    if (path && d.auth === "none") {
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `${field} needs daemon.auth token, got daemon.auth none`,
        {
          details: { field, value: path },
        },
      );
    }
  }
}

async function compose(
  config: Config,
  logger: Logger,
  log: Logger,
  life: Lifecycle,
  registry: ModelRegistry,
  initialFacts: NodeFacts,
  factsOptions: NodeFactsOptions,
): Promise<Daemon> {
  const d = config.daemon;
  const [host, portText] = splitHostPort(d.listen);
  let facts = initialFacts;
  // The API's tokens reach everything; the peers' and the mirror's, when set, only their own routes.
  const tokenFile = (field: string, path: string | undefined) =>
    path ? life.add(field, new TokenFile(path, { logger, field }), (t) => t.close()) : undefined;
  const credentials = {
    tokens: d.auth === "token" ? tokenFile("daemon.tokenFile", d.tokenFile) : undefined,
    peerTokens: tokenFile("peers.tokenFile", config.peers.tokenFile),
    mirrorTokens: tokenFile("mirror.tokenFile", config.mirror.tokenFile),
  };
  const metrics = new Metrics();
  metrics.buildInfo.set({ version: VERSION, node_version: process.version }, 1);
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
  // A ModelCache's first wave splits the model's parts over the nodes staging it (src/peers/cohort.ts).
  const cohorts = peers ? new Cohorts(undefined) : undefined;
  const source = life.add(
    "object source",
    peers
      ? new PeerAwareSource(s3, {
          urls: () => peerUrls(peers.urls(), cohorts?.others() ?? []),
          cohorts,
          cohortWaitMs: config.peers.cohortWaitMs,
          token: () => peerToken(credentials),
          timeoutMs: config.peers.timeoutMs,
          maxInFlight: config.peers.maxInFlight,
          maxInFlightPerPeer: config.peers.maxInFlightPerPeer,
          logger: logger.child({ component: "peers" }),
          metrics,
        })
      : s3,
    (s) => s.close(),
  );
  if (peers) {
    life.defer("peers", () => peers.stop());
    await peers.start();
  }
  // The byte path: parts are received, hashed and written on these threads, not the event loop's.
  const workers = partWorkersFor(config.download.workers);
  if (workers) life.defer("part workers", () => workers.close());
  // Read once: the labeler and the ModelCache reconciler share this node's credentials.
  const kube = kubeAccess(config);
  const labeler = nodeLabeler(config, kube, logger, log);
  if (labeler) {
    life.defer("node labels", async () => {
      await labeler.flush().catch(() => {});
      labeler.close();
    });
  }
  // containerd's Images API, for tags (this node's mirror and peers' questions).
  const images = config.mirror.containerdSocket
    ? life.add(
        "containerd images",
        containerdImages(config.mirror.containerdSocket, config.mirror.containerdNamespace),
        (i) => i.close(),
      )
    : undefined;
  let ready = false;
  // One client for every compile-cache remote, made on first use: a node without one opens nothing.
  let ccClient: ReturnType<typeof compileCacheClient> | undefined;
  life.defer("compile-cache client", () => ccClient?.destroy());
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
  let modelCaches: ModelCacheReconciler | undefined;
  const manager: ModelManager = new ModelManager({
    root: d.root,
    registry,
    source,
    scheduler: new SlotScheduler(config.download.concurrency),
    rateLimiter: rateLimiterFrom(config.download),
    stage: stageSettingsFrom(config.download),
    spreadParts: peers !== undefined,
    cohorts,
    runPart: workers?.run,
    config,
    logger: logger.child({ component: "models" }),
    metrics,
    onReadyChanged: (ids) => labeler?.set(ids),
    onStateChanged: () => {
      for (const [state, n] of Object.entries(manager.countByState())) metrics.models.set({ state }, n);
      modelCaches?.kick();
    },
    extra: compileCaches,
  });
  metrics.stagingFrom(() => manager.staging());
  publishNodeFacts(metrics, facts);
  const pageCache = new PageCacheWarmer({
    mode: config.pageCache.warm,
    budget: async () => warmBudget(await memoryRoom(config.node.hostRoot), config.pageCache.reserveBytes),
    // fastsafetensors over GDS reads with O_DIRECT: pages read in now would only take memory.
    bypassed: () => facts.gds.loadFormat === "fastsafetensors",
    logger: logger.child({ component: "page-cache" }),
    metrics,
  });
  const contentStore = config.mirror.listen
    ? new ContentStore(
        config.mirror.contentDir ??
          join(config.node.hostRoot, "var/lib/containerd/io.containerd.content.v1.content"),
      )
    : undefined;
  let mirrorWatch: Awaited<ReturnType<typeof watchContainerd>> | undefined;
  const deps = {
    manager,
    compileCaches,
    contentStore,
    images,
    logger,
    metrics,
    ...credentials,
    bodyLimitBytes: d.bodyLimitBytes,
    isReady: () => ready,
    nodeFacts: () => facts,
    pageCache,
    mirrorCheck: () => mirrorWatch?.current(),
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
              token: () => peerToken(credentials),
              timeoutMs: config.peers.timeoutMs,
              logger: logger.child({ component: "mirror" }),
            })
          : undefined,
        tags: config.mirror.resolveTags
          ? new TagResolver({
              local: images,
              urls: () => peers?.urls() ?? [],
              token: () => peerToken(credentials),
              timeoutMs: config.peers.timeoutMs,
              logger: logger.child({ component: "mirror" }),
            })
          : undefined,
        registries: config.mirror.registries,
        ...credentials,
        logger,
        metrics,
      })
    : undefined;
  const sock = buildApp(deps, "socket");
  const metricsApp = buildMetricsApp({ ...deps, metrics });
  // Closed after the drain below (registered before it): long-polls are cut, and waiters reconnect
  // (with retries) to the next daemon.
  life.defer("listeners", () =>
    Promise.allSettled([api.close(), sock.close(), metricsApp.close(), mirrorApp?.close()]),
  );
  // Running jobs get the stop's grace to finish (then abort, journals kept); none on a failed start.
  life.defer("staging", ({ graceMs, hurry }) =>
    Promise.all([manager.drain(graceMs, hurry), compileCaches.stop()]),
  );
  // First of the listeners: /livez answers while the model store loads (the kubelet's liveness probe
  // may already run, after a refusal handed over), /readyz says not ready until the end.
  const [mHost, mPort] = splitHostPort(d.metricsListen);
  const metricsAddress = await listen(
    () => metricsApp.listen({ host: mHost, port: Number(mPort) }),
    "daemon.metricsListen",
    d.metricsListen,
  );
  // Before the models start: a volume still mounted into a pod holds its model from the outset.
  const csi = config.csi.socketPath
    ? await recoverCsiDriver({
        config,
        models: manager,
        caches: compileCaches,
        pageCache,
        advice: () => ({
          loadFormat: facts.gds.loadFormat,
          gds: facts.gds.verdict,
          gpuProduct: facts.gpus.product ?? "",
        }),
        version: VERSION,
        logger,
        metrics,
      })
    : undefined;
  await manager.start();
  if (config.kube.modelCaches === "off") await releaseModelCachePins(manager, log);
  await compileCaches.start();
  // After the manager has told the labeler which models are ready: a sync before that would see no
  // ready models and strip the node's model labels on every restart.
  labeler?.setFacts(factLabels(facts));
  const apiAddress = await listen(
    () => api.listen({ host, port: Number(portText) }),
    "daemon.listen",
    d.listen,
  );
  if (cohorts) cohorts.self = selfPeerUrl(config.peers.selfAddress ?? host, apiAddress);
  modelCaches = startModelCaches(config, manager, compileCaches, cohorts, kube, logger, life);
  let mirrorAddress: string | undefined;
  if (mirrorApp && config.mirror.listen) {
    const [mh, mp] = splitHostPort(config.mirror.listen);
    mirrorAddress = await listen(
      () => mirrorApp.listen({ host: mh, port: Number(mp) }),
      "mirror.listen",
      config.mirror.listen,
    );
    // containerd goes back to the node's own hosts.toml (and the registry) while no mirror runs.
    mirrorWatch = life.add(
      "containerd watch",
      await watchContainerd({
        config,
        listenPort: Number(mirrorAddress.slice(mirrorAddress.lastIndexOf(":") + 1)),
        token: () => mirrorToken(credentials),
        onTokenChange: (listener) => onTokensReloaded(credentials, listener),
        log,
        metrics,
      }),
      (w) => w.stop(),
    );
  }
  await listenSocket((path) => sock.listen({ path }), d.socketPath);
  if (csi) {
    // Closed before the drain: the kubelet sends no new publish to a daemon that is going.
    life.add("csi driver", await csi.serve({ ready: () => ready }), (s) => s.close());
  }

  const refreshDisk = async () => {
    const disk = await manager.disk();
    metrics.rootFreeBytes.set(disk.freeBytes);
    metrics.rootUsedBytes.set(disk.modelBytes);
    metrics.compileCacheLocalBytes.set(compileCaches.localBytes());
    await manager.enforceWatermarks();
  };
  const diskTimer = setInterval(
    () => refreshDisk().catch((e) => log.error({ err: String(e) }, "disk check")),
    30_000,
  );
  diskTimer.unref();
  life.defer("disk check", () => clearInterval(diskTimer));
  const reprobe = reprobeNodeFacts({
    options: factsOptions,
    initial: facts,
    log,
    onFacts: (next, changed) => {
      facts = next;
      publishNodeFacts(metrics, facts);
      labeler?.setFacts(factLabels(facts));
      if (changed) logNodeFacts(log, next);
    },
  });
  life.defer("node re-probe", () => reprobe.stop());
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
      await life.close({ graceMs, hurry });
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

/** This node's name and Kubernetes credentials (kube.nodeName, the kubeconfig or the pod's own); undefined without either. */
function kubeAccess(
  config: Config,
): { nodeName: string; kubeConfig: NonNullable<ReturnType<typeof loadKubeConfig>> } | undefined {
  const { nodeName, kubeconfig } = config.kube;
  const kubeConfig = nodeName ? loadKubeConfig(environment(), kubeconfig) : undefined;
  return nodeName && kubeConfig ? { nodeName, kubeConfig } : undefined;
}

function nodeLabeler(
  config: Config,
  kube: ReturnType<typeof kubeAccess>,
  logger: Logger,
  log: Logger,
): NodeLabeler | undefined {
  const { labels } = config.kube;
  if (labels === "off") return undefined;
  if (!kube) {
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
  return new NodeLabeler({ ...kube, logger: logger.child({ component: "labels" }) });
}

/** Reconciles the ModelCache resources that select this node, when kube.modelCaches is on. */
function startModelCaches(
  config: Config,
  models: ModelManager,
  compileCaches: CompileCacheManager,
  cohorts: Cohorts | undefined,
  kube: ReturnType<typeof kubeAccess>,
  logger: Logger,
  life: Lifecycle,
): ModelCacheReconciler | undefined {
  const { modelCaches } = config.kube;
  if (modelCaches === "off") return undefined;
  if (!kube) {
    throw new ColdstartError(
      "CS_CONFIG_INVALID",
      "kube.modelCaches on needs kube.nodeName and Kubernetes credentials",
      { details: { field: "kube.modelCaches", value: modelCaches } },
    );
  }
  const { nodeName, kubeConfig } = kube;
  const log = logger.child({ component: "modelcaches" });
  const status = new ModelCacheStatusWriter({ kubeConfig, nodeName, logger: log });
  let reconciler: ModelCacheReconciler | undefined;
  const watch = new ModelCacheWatch({
    kubeConfig,
    nodeName,
    logger: log,
    onChange: () => reconciler?.kick(),
  });
  reconciler = new ModelCacheReconciler({
    nodeName,
    watch,
    status,
    models,
    cohorts,
    // As a pod's handshake would, bounded the same way; a miss or a slow remote is only logged.
    restoreCompileCache: (identity) => compileCaches.restore({ identity, timeoutMs: 600_000 }),
    logger: log,
  });
  watch.start();
  const r = reconciler;
  life.defer("model caches", async () => {
    r.stop();
    watch.stop();
    // The last state written, within a moment: a stop must not hang on an API server that is gone.
    await Promise.race([status.flush(), new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
    status.close();
  });
  return reconciler;
}

/** This node's peer URL as the others reach it: the pod IP (or the listen host) and the API port. */
function selfPeerUrl(address: string, apiAddress: string): string | undefined {
  if (address === "0.0.0.0" || address === "::" || address === "") return undefined;
  const port = new URL(apiAddress.includes("://") ? apiAddress : `http://${apiAddress}`).port;
  return new URL(`http://${address.includes(":") ? `[${address}]` : address}:${port}`).origin;
}

/** The peers to ask: discovery's, and the first waves' members (possibly not resolved yet). */
function peerUrls(discovered: string[], members: string[]): string[] {
  return [...new Set([...discovered, ...members])];
}
