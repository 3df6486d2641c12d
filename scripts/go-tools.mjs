// Kubernetes test tools that exist only as Go modules, built pinned into a cache outside the clone
// that survives between runs: ${XDG_CACHE_HOME:-$HOME/.cache}/coldstart/go-tools/<name>@<version>/<name>.
// A tool already there is not built again (the second run takes milliseconds).
//   csi-sanity  the CSI conformance suite (kubernetes-csi/csi-test), run by test/csi/csi-sanity.test.ts
//   psa-check   test/tools/psa-check: the Pod Security admission evaluator over manifests, run by
//               test/deploy/pod-security.test.ts. Its version carries a hash of its sources, so an
//               edit to main.go, go.mod or go.sum builds a new binary instead of reusing a stale one.
// Run by scripts/test-setup.mjs (npm test's pretest) and on its own: `node scripts/go-tools.mjs`.
// Without `go` on PATH it builds nothing and says so: the tests that need a tool skip on a developer
// machine and fail under CI. A failed build fails the run under CI and only warns elsewhere.
// Node built-ins only. test/support/go-tools.ts finds the binaries through goToolPath().
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const PSA_CHECK_DIR = join(root, "test", "tools", "psa-check");
const CSI_SANITY = "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity";

/** A short hash of the psa-check sources (every file of its directory, by name and content). */
function sourceHash(dir) {
  const h = createHash("sha256");
  for (const name of readdirSync(dir).sort()) h.update(`${name}\0`).update(readFileSync(join(dir, name)));
  return h.digest("hex").slice(0, 12);
}

/** The pinned tools: how each is built into `bin` (a fresh directory), given the cache's env. */
export const GO_TOOLS = {
  "csi-sanity": {
    version: () => "v5.6.0",
    build: (bin) => ({
      cmd: ["go", "install", `${CSI_SANITY}@v5.6.0`],
      cwd: root,
      env: { GOBIN: bin, GOFLAGS: "-mod=mod" },
    }),
  },
  "psa-check": {
    // k8s.io/pod-security-admission's release (go.mod keeps every k8s.io module at it).
    version: () => `v0.37.2-${sourceHash(PSA_CHECK_DIR)}`,
    build: (bin) => ({
      cmd: ["go", "build", "-o", join(bin, "psa-check"), "."],
      cwd: PSA_CHECK_DIR,
      // go.sum is checked in: resolve nothing new, verify what is downloaded against it.
      env: { GOFLAGS: "-mod=readonly -buildvcs=false" },
    }),
  },
};

/** The cache directory for all tools. */
export function goToolsCache(env = process.env) {
  const base = env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache");
  return join(base, "coldstart", "go-tools");
}

/** Where a tool's binary lives once built (whether or not it is there). */
export function goToolPath(name, env = process.env) {
  const tool = GO_TOOLS[name];
  if (!tool) throw new Error(`unknown Go tool ${name}; known: ${Object.keys(GO_TOOLS).join(", ")}`);
  return join(goToolsCache(env), `${name}@${tool.version()}`, name);
}

function main() {
  const say = (line) => process.stderr.write(`go-tools: ${line}\n`);
  const ci = Boolean(process.env.CI);
  const go = spawnSync("go", ["version"], { encoding: "utf8" });
  if (go.status !== 0) {
    say(`go is not on PATH: not building ${Object.keys(GO_TOOLS).join(", ")}`);
    if (ci) say("under CI the tests that need them fail (install Go 1.26 or later)");
    return 0;
  }
  let failed = 0;
  for (const name of Object.keys(GO_TOOLS)) {
    const path = goToolPath(name);
    if (existsSync(path)) continue;
    const dir = dirname(path);
    // Built into a temporary directory and renamed: an interrupted build leaves no half binary.
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    const { cmd, cwd, env } = GO_TOOLS[name].build(tmp);
    say(`building ${name} (${cmd.join(" ")}) into ${dir}`);
    const started = Date.now();
    const r = spawnSync(cmd[0], cmd.slice(1), {
      cwd,
      stdio: "inherit",
      env: { ...process.env, ...env },
      timeout: 15 * 60_000,
    });
    if (r.status !== 0 || !existsSync(join(tmp, name))) {
      rmSync(tmp, { recursive: true, force: true });
      say(`building ${name} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
      failed++;
      continue;
    }
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    say(`built ${name} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  if (failed > 0 && !ci) say("the tests that need a missing tool skip outside CI");
  return failed > 0 && ci ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exit(main());
