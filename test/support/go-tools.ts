/**
 * The Kubernetes test tools built from Go modules by scripts/go-tools.mjs (csi-sanity, psa-check, etcd,
 * kube-apiserver, helm), found in the cache it builds them into. A test that needs one calls
 * requireGoTool(): under CI a missing tool fails the test, naming the build command; elsewhere (a
 * machine without Go) it skips.
 */
import { existsSync } from "node:fs";
import { goToolPath } from "../../scripts/go-tools.mjs";

/** The tool's binary, or undefined when it is not built. */
export function goTool(name: string): string | undefined {
  const path = goToolPath(name);
  return existsSync(path) ? path : undefined;
}

/**
 * The tool's binary; when it is missing, throws under CI and otherwise skips the test through
 * `skip` (vitest's `ctx.skip`).
 */
export function requireGoTool(name: string, skip: (note?: string) => never): string {
  const path = goTool(name);
  if (path) return path;
  const why = `${name} is not built at ${goToolPath(name)}: run \`node scripts/go-tools.mjs\` (needs Go 1.26 or later on PATH; npm test's pretest runs it)`;
  if (process.env.CI) throw new Error(why);
  return skip(why);
}
