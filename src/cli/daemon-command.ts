import { once } from "node:events";
import { Command } from "commander";
import { loadConfigFromProcess } from "../config/load.js";
import { toColdstartError } from "../errors.js";
import { createLogger } from "../log.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { EXIT, reportError } from "./report.js";

const GROUPS = new Set([
  "s3",
  "download",
  "daemon",
  "sources",
  "eviction",
  "kube",
  "node",
  "gds",
  "placement",
  "peers",
  "mirror",
  "csi",
  "pageCache",
  "log",
  // Not retention nor upload grace: those are `cache prune`'s, which runs apart from the daemons.
  "compileCache.remote",
  "compileCache.allow",
  "compileCache.publish",
  "compileCache.quietPeriodMs",
  "compileCache.scanIntervalMs",
  "compileCache.maxBytes",
]);

/**
 * `coldstart daemon`: runs until SIGTERM/SIGINT, then drains (docs/api.md, Lifecycle). A second
 * signal skips the grace period; journals keep every durable part either way.
 */
export function daemonCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("daemon").description(
    "Run the node daemon: HTTP API, handshake socket, metrics, staging, eviction, node labels.",
  );
  const byAttr = addSchemaOptions(cmd, GROUPS);
  cmd.action(async () => {
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      // The root has no component: each component's child names its own (a base one would repeat).
      const root = createLogger(config.log.level);
      const logger = root.child({ component: "daemon" });
      // The daemon's modules (fastify, the AWS SDK, the Kubernetes client) load only for this command.
      const { holdUntilNodeAccepted, startDaemon } = await import("../main.js");
      // One signal handler for the whole life of the command: a first signal ends a refusal, stops
      // a daemon that is still starting as soon as it has started, or drains a running one; a
      // second one skips the drain's grace.
      const stop = new AbortController();
      const hurry = new AbortController();
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      function onSignal(sig: NodeJS.Signals) {
        if (stop.signal.aborted) {
          logger.warn({ signal: sig }, "second signal: stopping now");
          hurry.abort();
          return;
        }
        logger.info({ signal: sig, graceMs: config.daemon.shutdownGraceMs }, "draining");
        stop.abort();
      }
      // A refused node (daemon.onRefusal serve) is served until it passes.
      const facts = await holdUntilNodeAccepted(config, root, stop.signal);
      // A signal during the first probe, on a node that passes, still stops it before it starts.
      if (!facts || stop.signal.aborted) {
        logger.info(facts ? "stopped before starting" : "stopped while refusing the node");
        setExit(EXIT.ok);
        return;
      }
      const daemon = await startDaemon(config, root, { facts });
      if (!stop.signal.aborted) await once(stop.signal, "abort");
      await daemon.stop(config.daemon.shutdownGraceMs, hurry.signal);
      setExit(EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, false);
      setExit(e.code === "CS_CONFIG_INVALID" ? EXIT.usage : EXIT.failed);
    }
  });
  return cmd;
}
