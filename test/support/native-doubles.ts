/**
 * ABI-level test doubles for NVIDIA's libraries: test/support/native/fake-nvml.c and fake-cufile.c,
 * compiled here into stand-ins for libnvidia-ml.so.1 and libcufile.so.0 (behaviour chosen by FAKE_*
 * environment variables, see the sources). The addon loads them through its explicit path override.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DEFAULT_ADDON_PATH } from "../../src/node/native.js";

const sources = resolve(import.meta.dirname, "native");

export interface FakeLibraries {
  nvml: string;
  /** NVML as an older driver ships it: no nvmlSystemGetCudaDriverVersion. */
  nvmlOld: string;
  cufile: string;
}

/** Builds (once per source version, shared by parallel test files) and returns the two libraries. */
export function fakeLibraries(): FakeLibraries {
  return {
    nvml: build("fake-nvml.c", "libnvidia-ml.so.1"),
    nvmlOld: build("fake-nvml.c", "libnvidia-ml.so.1", ["-DFAKE_NVML_OLD"]),
    cufile: build("fake-cufile.c", "libcufile.so.0"),
  };
}

function build(source: string, soname: string, defines: string[] = []): string {
  const file = join(sources, source);
  const hash = createHash("sha256").update(readFileSync(file)).update(defines.join(" ")).digest("hex");
  const dir = join(tmpdir(), `coldstart-fakes-${hash.slice(0, 12)}`);
  const out = join(dir, soname);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  // Unique temp name, then rename: test files build concurrently in several workers.
  const tmp = `${out}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  execFileSync("cc", [
    "-shared",
    "-fPIC",
    "-Wall",
    "-Wextra",
    "-Werror",
    ...defines,
    `-Wl,-soname,${soname}`,
    "-o",
    tmp,
    file,
  ]);
  renameSync(tmp, out);
  return out;
}

/** The addon built by `npm install`; tests of the native path need it (CI builds it as required). */
export function builtAddon(): string {
  if (!existsSync(DEFAULT_ADDON_PATH)) {
    throw new Error(`${DEFAULT_ADDON_PATH} is missing: run npm run build:native (cmake and g++ needed)`);
  }
  return DEFAULT_ADDON_PATH;
}
