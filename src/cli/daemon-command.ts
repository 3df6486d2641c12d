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
      // A refused node (daemon.onRefusal serve) is served until it passes; a signal there just ends it.
      const refusing = new AbortController();
      const endRefusal = () => refusing.abort();
      process.once("SIGTERM", endRefusal);
      process.once("SIGINT", endRefusal);
      const facts = await holdUntilNodeAccepted(config, root, refusing.signal).finally(() => {
        process.off("SIGTERM", endRefusal);
        process.off("SIGINT", endRefusal);
      });
      // A signal during the first probe, on a node that passes, still stops it before it starts.
      if (!facts || refusing.signal.aborted) {
        logger.info(facts ? "stopped before starting" : "stopped while refusing the node");
        setExit(EXIT.ok);
        return;
      }
      const daemon = await startDaemon(config, root, { facts });
      await new Promise<void>((resolve) => {
        const hurry = new AbortController();
        let stopping = false;
        const onSignal = (sig: NodeJS.Signals) => {
          if (stopping) {
            logger.warn({ signal: sig }, "second signal: stopping now");
            hurry.abort();
            return;
          }
          stopping = true;
          logger.info({ signal: sig, graceMs: config.daemon.shutdownGraceMs }, "draining");
          daemon.stop(config.daemon.shutdownGraceMs, hurry.signal).then(resolve, resolve);
        };
        process.on("SIGTERM", onSignal);
        process.on("SIGINT", onSignal);
      });
      setExit(EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, false);
      setExit(e.code === "CS_CONFIG_INVALID" ? EXIT.usage : EXIT.failed);
    }
  });
  return cmd;
}
