// `npm test`'s pretest: makes a fresh clone testable with that one command, as CI runs it.
//  1. System packages the tests start for real (Ceph RGW, containerd, cmake and a compiler for the
//     addon, iproute2): scripts/install-test-deps.sh, which installs them with apt-get as root and
//     does nothing when they are there. Not root and something missing: say what, and how, and stop.
//     First, so that the addon's build in step 2 finds its compiler.
//  2. npm packages: `npm ci` when node_modules is missing or older than package-lock.json
//     (COLDSTART_NATIVE_BUILD=required, as CI sets it, makes a broken addon fail here).
//  3. The native addon: built (warnings as errors) if the build is missing, e.g. because cmake was
//     only installed by step 2.
//  4. Kubernetes test tools that exist only as Go modules (csi-sanity, psa-check, and etcd and
//     kube-apiserver for the real control plane): scripts/go-tools.mjs builds them pinned into
//     ~/.cache/coldstart/go-tools when `go` is on PATH (skips what is there; kube-apiserver takes
//     minutes cold, see that script).
// Node built-ins only: it runs before node_modules exists.
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const say = (line) => process.stderr.write(`test-setup: ${line}\n`);

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env: { ...process.env, ...env } });
  if (r.status !== 0) {
    say(`${cmd} ${args.join(" ")} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
    process.exit(1);
  }
}

const isRoot = process.getuid?.() === 0;
const check = spawnSync("bash", [join(root, "scripts/install-test-deps.sh"), "--check"], {
  cwd: root,
  encoding: "utf8",
});
if (check.status !== 0) {
  if (!isRoot) {
    process.stderr.write(check.stderr);
    say("the tests start a real Ceph RGW and containerd; install them (once) with:");
    say("  sudo bash scripts/install-test-deps.sh");
    process.exit(1);
  }
  run("bash", [join(root, "scripts/install-test-deps.sh")]);
}

const modules = join(root, "node_modules", ".package-lock.json");
const lock = join(root, "package-lock.json");
if (!existsSync(modules) || statSync(modules).mtimeMs < statSync(lock).mtimeMs) {
  say("npm packages missing or older than package-lock.json: npm ci");
  run("npm", ["ci"]);
}

if (!existsSync(join(root, "build", "Release", "coldstart_native.node"))) {
  say("native addon not built: building it (npm run build:native, warnings as errors)");
  run(process.execPath, [join(root, "scripts/build-native.mjs")], { COLDSTART_NATIVE_BUILD: "required" });
}

run(process.execPath, [join(root, "scripts/go-tools.mjs")]);
