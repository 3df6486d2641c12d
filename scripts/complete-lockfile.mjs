// Adds the lockfile entries of other platforms' optional native packages (biome, rollup) that npm
// could not record because the registry this machine reaches serves only linux-x64 ones. Without
// them `npm ci` refuses ("Missing: … from lock file"). Each entry carries os/cpu/libc, so npm skips
// it on any other platform exactly as it would an entry it wrote itself. Run after `npm install`:
// `npm run lock:complete`.
import { readFileSync, writeFileSync } from "node:fs";

const path = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(path, "utf8"));
const OS = [
  "android",
  "darwin",
  "freebsd",
  "linux",
  "openbsd",
  "openharmony",
  "win32",
  "aix",
  "sunos",
  "netbsd",
];
const CPU = ["arm64", "x64", "ia32", "arm", "loong64", "ppc64", "riscv64", "s390x"];
let added = 0;
for (const meta of Object.values(lock.packages)) {
  for (const [dep, version] of Object.entries(meta.optionalDependencies ?? {})) {
    const key = `node_modules/${dep}`;
    if (lock.packages[key]) continue;
    const base = `-${dep.split("/").at(-1)}-`;
    const os = OS.find((o) => base.includes(`-${o}-`));
    const cpu = CPU.find((c) => base.includes(`-${c}-`));
    if (!os || !cpu || !/^\d+\.\d+\.\d+/.test(version)) {
      throw new Error(`${dep}@${version}: cannot infer a platform entry; add it by hand`);
    }
    const libc = base.includes("-musl") ? ["musl"] : os === "linux" ? ["glibc"] : undefined;
    lock.packages[key] = { version, cpu: [cpu], optional: true, os: [os], ...(libc ? { libc } : {}) };
    added++;
  }
}
writeFileSync(path, `${JSON.stringify(lock, null, 2)}\n`);
process.stdout.write(`complete-lockfile: added ${added} platform entries\n`);
