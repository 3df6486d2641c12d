// Kubernetes test tools that exist only as Go modules, built pinned into a cache outside the clone
// that survives between runs: ${XDG_CACHE_HOME:-$HOME/.cache}/coldstart/go-tools/<name>@<version>/<name>.
// A tool already there is not built again (the second run takes milliseconds).
//   csi-sanity  the CSI conformance suite (kubernetes-csi/csi-test), run by test/csi/csi-sanity.test.ts
//   psa-check   test/tools/psa-check: the Pod Security admission evaluator over manifests, run by
//               test/deploy/pod-security.test.ts. Its version carries a hash of its sources, so an
//               edit to main.go, go.mod or go.sum builds a new binary instead of reusing a stale one.
//   etcd        test/tools/etcd: etcd's server (go.etcd.io/etcd/server/v3), for the real control plane
//               that test/support/kube-control-plane.ts starts (envtest-style).
//   kube-apiserver
//               test/tools/kube-apiserver: the API server of k8s.io/kubernetes, pinned by a wrapper
//               module (upstream's go.mod replaces its staging modules with local paths, so `go install`
//               is refused). The slow one: 4 minutes cold on two cores (all four tools from empty
//               Go caches: 5.3 minutes, 0.8 GB of modules, 3.2 GB of build cache); 5 s to relink.
//   etcd and kube-apiserver are versioned like psa-check: release plus a hash of the wrapper's sources.
//   helm        helm.sh/helm/v4's command, for the chart in deploy/helm (`helm lint`, `helm template`,
//               `helm package`), run by test/deploy/helm.test.ts and scripts/helm-package.sh. Upstream's
//               go.mod has no replace directives, so `go install module@version` builds it as released,
//               with the version stamped as upstream's Makefile does (else `helm version` says v4.3).
//               From empty Go caches: 3.2 minutes of CPU (5.2 minutes wall on a busy 2-core machine);
//               1.7 minutes when the build cache already holds the k8s.io modules the tools above built;
//               10 s to relink.
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
const ETCD_DIR = join(root, "test", "tools", "etcd");
const KUBE_APISERVER_DIR = join(root, "test", "tools", "kube-apiserver");
const CSI_SANITY = "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity";
const HELM = "helm.sh/helm/v4/cmd/helm";
const HELM_VERSION = "v4.3.2";

/**
 * A short hash of a wrapper module's sources (every file of its directory, by name and content) and of
 * anything else its binary depends on (`extra`: build flags).
 */
function sourceHash(dir, ...extra) {
  const h = createHash("sha256");
  for (const name of readdirSync(dir).sort()) h.update(`${name}\0`).update(readFileSync(join(dir, name)));
  for (const e of extra) h.update(`\0${e}`);
  return h.digest("hex").slice(0, 12);
}

/** The version that `dir`/go.mod requires of `module` (the one pin; nothing here repeats it). */
function required(dir, module) {
  const gomod = readFileSync(join(dir, "go.mod"), "utf8");
  const line = gomod.split("\n").find((l) =>
    l
      .trim()
      .replace(/^require\s+/, "")
      .startsWith(`${module} v`),
  );
  if (!line) throw new Error(`${join(dir, "go.mod")} requires no ${module}`);
  return line.trim().split(/\s+/).at(-1);
}

/** kube-apiserver's version stamp, as the release's own build sets it (GET /version reports it). */
function kubeVersionFlags() {
  const version = required(KUBE_APISERVER_DIR, "k8s.io/kubernetes");
  const [major, minor] = version.slice(1).split(".");
  const pkg = "k8s.io/component-base/version";
  return [`-X ${pkg}.gitVersion=${version}`, `-X ${pkg}.gitMajor=${major}`, `-X ${pkg}.gitMinor=${minor}`];
}

/**
 * A wrapper module in `dir` built into `bin/<name>`. go.sum is checked in: resolve nothing new, verify
 * what is downloaded against it. -trimpath and no symbol table: a smaller binary, no local paths.
 */
function wrapperBuild(name, dir, ldflags = () => []) {
  return (bin) => ({
    cmd: [
      "go",
      "build",
      "-trimpath",
      `-ldflags=${["-s", "-w", ...ldflags()].join(" ")}`,
      "-o",
      join(bin, name),
      ".",
    ],
    cwd: dir,
    env: { GOFLAGS: "-mod=readonly -buildvcs=false" },
  });
}

/**
 * The pinned tools: how each is built into `bin` (a fresh directory), given the cache's env, and how
 * long a build may take before it is abandoned (default 15 minutes).
 */
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
  etcd: {
    // go.etcd.io/etcd/server/v3's release, as test/tools/etcd/go.mod pins it.
    version: () => `${required(ETCD_DIR, "go.etcd.io/etcd/server/v3")}-${sourceHash(ETCD_DIR)}`,
    build: wrapperBuild("etcd", ETCD_DIR),
  },
  "kube-apiserver": {
    // k8s.io/kubernetes's release, as test/tools/kube-apiserver/go.mod pins it (with its staging
    // modules at the matching v0.X.Y). A plain go build would report v0.0.0-master from GET /version.
    version: () =>
      `${required(KUBE_APISERVER_DIR, "k8s.io/kubernetes")}-${sourceHash(KUBE_APISERVER_DIR, ...kubeVersionFlags())}`,
    build: wrapperBuild("kube-apiserver", KUBE_APISERVER_DIR, kubeVersionFlags),
    // About 2,000 packages: 4 minutes cold on an idle 2-core machine; a loaded CI machine gets headroom.
    timeoutMs: 40 * 60_000,
  },
  helm: {
    version: () => HELM_VERSION,
    build: (bin) => ({
      cmd: [
        "go",
        "install",
        "-trimpath",
        `-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.metadata=`,
        `${HELM}@${HELM_VERSION}`,
      ],
      cwd: root,
      env: { GOBIN: bin, GOFLAGS: "-mod=mod" },
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
      timeout: GO_TOOLS[name].timeoutMs ?? 15 * 60_000,
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
