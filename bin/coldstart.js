#!/usr/bin/env -S node --
// Thin launcher: the compiled CLI lives in dist/ (built by `npm run build`, which `npm ci` runs via
// prepare). The "--" in the shebang matters: Node scans every argument for --env-file, even after the
// script name (nodejs/node#54232), and would try to load `coldstart wait --env-file PATH` itself and
// fail because the file does not exist yet. It stops scanning at "--".
import "../dist/cli/bin.js";
