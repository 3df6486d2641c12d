/**
 * A node the daemon must not stage on (gds.mode on without GDS, placement.require refusing the
 * staging root). With daemon.onRefusal exit the start fails with the first violation (exit 1). With
 * serve it stays up instead, so that Prometheus and the kubelet see why: /livez answers, /readyz is
 * 503 with the reasons, coldstart_policy_refused is 1 per reason, and the API and the handshake socket
 * answer every call 503 with the reason (a `coldstart wait` prints it and keeps waiting). Nothing is
 * staged and nothing under the staging root is opened. The node is probed again every minute for
 * half an hour, then every ten (the GPU Operator loads nvidia-fs minutes into a node's life; an
 * operator may mount the disks): once it passes, the listeners close and the real daemon starts in
 * their place.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { buildMetricsApp } from "../api/metrics-app.js";
import { buildRefusalApp } from "../api/refusal-app.js";
import type { Config } from "../config/schema.js";
import type { ColdstartError } from "../errors.js";
import type { NodeLabeler } from "../kube/node-labels.js";
import { Metrics } from "../metrics/metrics.js";
import { factLabels, type NodeFacts, publishNodeFacts } from "../node/node-facts.js";
import { listen, listenSocket, splitHostPort } from "./listen.js";
import { reprobeDelayMs } from "./node-reprobe.js";

export interface RefusalOptions {
  config: Config;
  logger: Logger;
  /** The daemon's version, for coldstart_build_info. */
  version: string;
  /** The node's facts again (the daemon's own probes). */
  probe: (previous: NodeFacts, signal: AbortSignal) => Promise<NodeFacts>;
  /** What the policy refuses in these facts (empty: fine to start). */
  violations: (facts: NodeFacts) => ColdstartError[];
  /** Stops the wait: resolves undefined (SIGTERM while refusing). */
  signal: AbortSignal;
  /** Between probes for the first half hour (reprobeDelayMs); a minute by default. */
  intervalMs?: number;
  /**
   * This node's labeler, made only if the node is refused: its model labels come off (nothing is
   * served here) and coldstart.io/refused names the setting, so the scheduler stops preferring it.
   */
  labeler?: () => NodeLabeler | undefined;
}

/**
 * Resolves with facts the policy accepts: these at once, or later ones after serving the refusal;
 * undefined when `signal` aborts first. Throws the first violation under daemon.onRefusal exit.
 */
export async function holdWhileRefused(facts: NodeFacts, o: RefusalOptions): Promise<NodeFacts | undefined> {
  let refused = o.violations(facts);
  if (refused.length === 0) return facts;
  if (o.config.daemon.onRefusal === "exit") throw refused[0];
  if (o.signal.aborted) return undefined;
  const log = o.logger.child({ component: "daemon" });
  // No process metrics: their monitors would outlive the refusal once the daemon takes over.
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  metrics.buildInfo.set({ version: o.version, node_version: process.version }, 1);
  const labeler = o.labeler?.();
  /** Metrics and labels for these facts; the reasons logged when `news`. */
  const publish = (f: NodeFacts, news: boolean) => {
    publishNodeFacts(metrics, f);
    labeler?.set([]);
    labeler?.setFacts(factLabels(f, refused));
    metrics.policyRefused.reset();
    for (const e of refused) {
      metrics.policyRefused.set({ code: e.code, field: fieldOf(e), value: String(e.details.value ?? "") }, 1);
    }
    if (!news) return;
    for (const e of refused) log.error({ code: e.code, ...e.details }, `refusing to stage: ${e.message}`);
  };
  publish(facts, true);

  const d = o.config.daemon;
  const metricsApp = buildMetricsApp({
    metrics,
    logger: o.logger,
    isReady: () => false,
    mirrorCheck: () => undefined,
    refusals: () => refused,
  });
  const api = buildRefusalApp(o.logger, "tcp", () => refused);
  const sock = buildRefusalApp(o.logger, "socket", () => refused);
  const closeAll = () => Promise.allSettled([api.close(), sock.close(), metricsApp.close()]);
  try {
    const [host, port] = splitHostPort(d.listen);
    const apiAddress = await listen(
      () => api.listen({ host, port: Number(port) }),
      "daemon.listen",
      d.listen,
    );
    const [mHost, mPort] = splitHostPort(d.metricsListen);
    const metricsAddress = await listen(
      () => metricsApp.listen({ host: mHost, port: Number(mPort) }),
      "daemon.metricsListen",
      d.metricsListen,
    );
    await listenSocket((path) => sock.listen({ path }), d.socketPath);
    log.warn(
      { api: apiAddress, metrics: metricsAddress, socket: d.socketPath, codes: refused.map((e) => e.code) },
      "coldstart daemon refusing the node: not ready, staging nothing",
    );

    const since = performance.now();
    for (;;) {
      if (!(await pause(reprobeDelayMs(performance.now() - since, o.intervalMs), o.signal))) return undefined;
      try {
        facts = await o.probe(facts, o.signal);
      } catch (e) {
        if (o.signal.aborted) return undefined;
        log.error({ err: String(e) }, "node facts");
        continue;
      }
      // A probe cut short by the signal reports what it could not see: not facts to publish.
      if (o.signal.aborted) return undefined;
      const was = refused.map((e) => e.message).join("\n");
      refused = o.violations(facts);
      if (refused.length === 0) {
        log.info("the node now passes the policy: starting");
        return facts;
      }
      // Logged again only when the reason changed: a refused node is not news every minute.
      publish(facts, refused.map((e) => e.message).join("\n") !== was);
    }
  } finally {
    await closeAll();
    if (labeler) {
      // The labels written so far, within a moment: the API server must not hold up the start.
      await Promise.race([labeler.flush().catch(() => {}), sleep(2_000, undefined, { ref: false })]);
      labeler.close();
    }
  }
}

/** The field a violation is about (placement.require, gds.mode). */
function fieldOf(e: ColdstartError): string {
  return typeof e.details.field === "string" ? e.details.field : "";
}

/** Waits `ms`; false when `signal` aborted first. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}
