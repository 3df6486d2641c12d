/** Config to the node's probes and its policy, for the daemon and `coldstart doctor` alike. */
import { environment } from "../config/load.js";
import type { Config } from "../config/schema.js";
import type { NodeFactsOptions, NodePolicy } from "../node/node-facts.js";

export function nodeFactsOptions(config: Config): NodeFactsOptions {
  return {
    hostRoot: config.node.hostRoot,
    stagingRoot: config.daemon.root,
    gdsMode: config.gds.mode,
    probeTimeoutMs: config.node.probeTimeoutMs,
    nvidiaSmi: config.node.nvidiaSmi,
    addonPath: config.node.addonPath,
    nvmlLibrary: config.node.nvmlLibrary,
    cufileLibrary: config.gds.cufileLibrary,
    cufileJson: config.gds.cufileJson,
    env: environment(),
  };
}

/** What makes the daemon refuse to start on this node (gds.mode on, placement.require). */
export function nodePolicy(config: Config): NodePolicy {
  return { gdsMode: config.gds.mode, placementRequire: config.placement.require };
}
