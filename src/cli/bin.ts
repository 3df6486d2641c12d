// Process entry of the `coldstart` command (bin/coldstart.js loads the compiled copy).
import { run } from "./main.js";

// The AWS SDK warns (9 lines on stderr, every run) that releases after January 2027 need Node 22+.
// We ship on Node 24 and know; on a Node 20 dev machine the warning would break the CLI's contract of
// one stderr line per failure. The variable is the SDK's documented opt-out.
if (Number(process.versions.node.split(".")[0]) < 22) {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
}

process.exitCode = await run(process.argv);
