/**
 * The addon's two builds from the one source list (native/sources.json): node-gyp from binding.gyp,
 * and cmake-js from native/CMakeLists.txt (the one `npm install` runs) under AddressSanitizer. Both
 * must compile without a warning under -Wall -Wextra, and the sanitized build runs every probe
 * scenario against the ABI doubles without a report.
 *
 * Tier: integration (two full compiles of the addon).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { cp, mkdtemp, readdir, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runProbe } from "../../src/node/native.js";
import { type FakeLibraries, fakeLibraries } from "../support/native-doubles.js";

const run = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");
const BUILD_TIMEOUT = 240_000;

let dir: string;
let libs: FakeLibraries;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-native-build-"));
  libs = fakeLibraries();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Compiler diagnostics in a build log (gcc and clang print "file:line:col: warning: ..."). */
function warnings(log: string): string[] {
  return log.split("\n").filter((l) => /\b(warning|error):/.test(l));
}

describe("native builds", () => {
  it("binding.gyp builds the same sources with node-gyp, without warnings", {
    timeout: BUILD_TIMEOUT,
  }, async () => {
    const work = join(dir, "gyp");
    for (const f of ["binding.gyp", "native", "package.json"])
      await cp(join(root, f), join(work, f), { recursive: true });
    await symlink(join(root, "node_modules"), join(work, "node_modules"));
    // Build against the headers of the running Node when it ships them (no download: no network here).
    const prefix = dirname(dirname(process.execPath));
    const nodedir = existsSync(join(prefix, "include/node/node.h")) ? [`--nodedir=${prefix}`] : [];
    const gyp = join(root, "node_modules/node-gyp/bin/node-gyp.js");
    const { stdout, stderr } = await run(process.execPath, [gyp, "rebuild", ...nodedir], {
      cwd: work,
      maxBuffer: 64 << 20,
    });
    expect(warnings(`${stdout}\n${stderr}`)).toEqual([]);
    const addonPath = join(work, "build/Release/coldstart_native.node");
    const o = await runProbe("gpus", { addonPath, libraryPath: libs.nvml, timeoutMs: 30_000 });
    expect(o.status === "ok" && o.result.gpus.map((g) => g.uuid)).toEqual([
      "GPU-11111111-2222-3333-4444-555555555555",
      "GPU-66666666-7777-8888-9999-000000000000",
    ]);
  });

  // Sanitized probes run one after another, each allowed 30 s: ten of them outlast the default timeout.
  describe("under AddressSanitizer", { timeout: BUILD_TIMEOUT }, () => {
    const asan = "/usr/lib/x86_64-linux-gnu/libasan.so.8";
    let addonPath: string;
    let reports: string;
    const sanitized = (vars: Record<string, string>) => ({
      PATH: process.env.PATH ?? "",
      LD_PRELOAD: asan,
      // Node itself keeps memory until exit on purpose; leaks are not what this run looks for.
      ASAN_OPTIONS: `detect_leaks=0:log_path=${reports}/asan`,
      ...vars,
    });

    beforeAll(async () => {
      reports = join(dir, "asan-reports");
      const out = join(dir, "asan");
      const cmakeJs = join(root, "node_modules/cmake-js/bin/cmake-js");
      const { stdout, stderr } = await run(
        process.execPath,
        [
          cmakeJs,
          "compile",
          "--directory",
          "native",
          "--out",
          out,
          "--CDCOLDSTART_ASAN=ON",
          "--CDCOLDSTART_WERROR=ON",
        ],
        { cwd: root, maxBuffer: 64 << 20 },
      );
      expect(warnings(`${stdout}\n${stderr}`)).toEqual([]);
      addonPath = join(out, "Release/coldstart_native.node");
    }, BUILD_TIMEOUT);

    it.skipIf(!existsSync(asan))("runs every probe scenario without a sanitizer report", async () => {
      const scenarios: [kind: "gpus" | "cufile", vars: Record<string, string>][] = [
        ["gpus", { FAKE_NVML: "h100x2" }],
        ["gpus", { FAKE_NVML: "none" }],
        ["gpus", { FAKE_NVML: "driver-not-loaded" }],
        ["cufile", {}],
        ["cufile", { FAKE_CUFILE_OPEN: "5001" }],
        ["cufile", { FAKE_CUFILE_NVFS: "0.0", FAKE_CUFILE_NVME: "0", FAKE_CUFILE_COMPAT: "1" }],
        // A future library writing a 12 KiB tail still fits the zeroed 16 KiB buffer.
        ["cufile", { FAKE_CUFILE_TAIL: "12000" }],
      ];
      for (const [kind, vars] of scenarios) {
        const libraryPath = kind === "gpus" ? libs.nvml : libs.cufile;
        const o = await runProbe(kind, { addonPath, libraryPath, timeoutMs: 30_000, env: sanitized(vars) });
        expect(o.status, JSON.stringify({ kind, vars, o })).toBe("ok");
      }
      // Wrong libraries and missing ones go through the error paths.
      for (const [kind, libraryPath] of [
        ["gpus", libs.cufile],
        ["cufile", libs.nvml],
        ["gpus", "/nonexistent.so"],
      ] as const) {
        expect(
          (await runProbe(kind, { addonPath, libraryPath, timeoutMs: 30_000, env: sanitized({}) })).status,
        ).toBe("ok");
      }
      expect(existsSync(reports) ? await readdir(reports) : []).toEqual([]);
    });

    it.skipIf(!existsSync(asan))(
      "would catch a memory error: a library overrunning the properties buffer is reported",
      async () => {
        const o = await runProbe("cufile", {
          addonPath,
          libraryPath: libs.cufile,
          timeoutMs: 30_000,
          env: sanitized({ FAKE_CUFILE_TAIL: "20000" }),
        });
        expect(o.status).toBe("failed");
        const files = await readdir(reports);
        expect(files.length).toBe(1);
        expect(await readFile(join(reports, files[0] as string), "utf8")).toMatch(/heap-buffer-overflow/);
        await rm(reports, { recursive: true, force: true });
      },
    );
  });
});
