// `npm install` hook: builds the native addon with cmake-js (native/CMakeLists.txt) into build/.
// The addon is optional at run time (coldstart degrades to "native: unavailable"), so by default a
// failed build warns and lets the install finish. COLDSTART_NATIVE_BUILD=required (CI, the image
// build) makes it fatal and warnings errors, so a broken addon cannot ship silently; =skip skips it.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const mode = process.env.COLDSTART_NATIVE_BUILD ?? "auto";
if (!["auto", "required", "skip"].includes(mode)) {
  process.stderr.write(`coldstart: COLDSTART_NATIVE_BUILD must be auto, required or skip, got ${mode}\n`);
  process.exit(1);
}
const required = mode === "required";
if (mode === "skip") {
  process.stderr.write("coldstart: native addon build skipped (COLDSTART_NATIVE_BUILD=skip)\n");
  process.exit(0);
}
const require = createRequire(import.meta.url);
const cli = join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
const args = [cli, "compile", "--directory", "native", "--out", "build"];
if (required) args.push("--CDCOLDSTART_WERROR=ON");
const result = spawnSync(process.execPath, args, { stdio: "inherit" });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `cmake-js exited with ${result.status ?? result.signal}`;
  process.stderr.write(
    `coldstart: the native addon did not build (${why}). coldstart still runs; GPU and GDS facts will ` +
      "say native: unavailable. Install cmake and a C++ compiler and run `npm run build:native`.\n",
  );
  process.exit(required ? 1 : 0);
}
