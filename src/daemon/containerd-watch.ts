import type { Logger } from "pino";
import type { Config } from "../config/schema.js";
import type { Metrics } from "../metrics/metrics.js";
import { checkContainerd, MIRROR_CHECK_CODES, type MirrorCheck } from "../mirror/containerd-check.js";
import { type ManagedHosts, manageHostsToml } from "../mirror/hosts-toml.js";

/** containerd's registry config is looked at again this often (the GPU Operator may rewrite it). */
const RECHECK_MS = 5 * 60_000;

/**
 * Whether containerd will ask this node's mirror at all, watched while the mirror runs: checked at
 * start and every five minutes, with a warning per problem when the answer changes and a gauge per
 * problem code. With mirror.manageHostsToml, the daemon writes hosts.toml itself and puts the
 * node's own files back when it stops, so containerd goes to the registry while no mirror runs; the
 * files are written again when the token containerd must send changes (a rotated Secret).
 */
export async function watchContainerd(o: {
  config: Pick<Config, "mirror" | "node">;
  /** The port the mirror actually bound (mirror.listen may say 0). */
  listenPort: number;
  /** The token containerd sends the mirror (mirror.tokenFile's first, else daemon.tokenFile's). */
  token: () => string | undefined;
  /** Subscribes to reloads of the token files; returns the unsubscription. */
  onTokenChange?: (listener: () => void) => () => void;
  log: Logger;
  metrics: Metrics;
}): Promise<{ current: () => MirrorCheck | undefined; stop: () => Promise<void> }> {
  const { mirror, node } = o.config;
  let current: MirrorCheck | undefined;
  const check = async () => {
    const c = await checkContainerd({
      hostRoot: node.hostRoot,
      registries: mirror.registries,
      resolveTags: mirror.resolveTags,
      mirrorPort: o.listenPort,
    });
    if (c.status !== current?.status) {
      for (const p of c.problems) o.log.warn({ code: p.code }, p.message);
      if (c.status === "ok") o.log.info({ certsDir: c.certsDir }, "containerd uses the mirror");
    }
    current = c;
    for (const code of MIRROR_CHECK_CODES)
      o.metrics.mirrorConfigProblems.set({ code }, c.problems.some((p) => p.code === code) ? 1 : 0);
  };
  await check();
  let managed: ManagedHosts | undefined;
  let written: string | undefined;
  let stopped = false;
  // Rewrites run one at a time, and never after stop() has put the node's own files back.
  let rewriting: Promise<void> = Promise.resolve();
  const write = async (certsDir: string) => {
    written = o.token();
    managed = await manageHostsToml({
      certsDir,
      registries: mirror.registries,
      mirrorUrl: `http://${mirror.hostAddress}:${o.listenPort}`,
      token: written,
      resolve: mirror.resolveTags,
    });
  };
  let unsubscribe = () => {};
  if (mirror.manageHostsToml) {
    const certsDir = current?.certsDir;
    if (!certsDir) {
      o.log.error(
        { codes: current?.problems.map((p) => p.code) },
        "mirror.manageHostsToml: containerd has no registry config_path to write hosts.toml under",
      );
    } else {
      await write(certsDir);
      o.log.info({ files: managed?.files }, "hosts.toml now sends pulls to this mirror first");
      await check();
      unsubscribe =
        o.onTokenChange?.(() => {
          rewriting = rewriting.then(async () => {
            if (stopped || o.token() === written) return;
            await write(certsDir).then(
              () => o.log.info({ files: managed?.files }, "hosts.toml rewritten with the new mirror token"),
              (e) => o.log.error({ err: String(e) }, "rewriting hosts.toml with the new mirror token"),
            );
          });
        }) ?? unsubscribe;
    }
  }
  const timer = setInterval(() => check().catch(() => {}), RECHECK_MS);
  timer.unref();
  return {
    current: () => current,
    async stop() {
      clearInterval(timer);
      unsubscribe();
      stopped = true;
      await rewriting;
      await managed?.restore().catch((e) => o.log.error({ err: String(e) }, "restoring hosts.toml"));
    },
  };
}
