import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { toColdstartError } from "../errors.js";
import { cacheCommand } from "./cache-command.js";
import { daemonCommand } from "./daemon-command.js";
import { doctorCommand } from "./doctor-command.js";
import { pullCommand } from "./pull-command.js";
import { EXIT, reportError } from "./report.js";
import { waitCommand } from "./wait-command.js";

export { EXIT, isUsageError, reportError } from "./report.js";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  version: string;
};

/** Runs the `coldstart` command line and resolves to the process exit code (never calls process.exit). */
export async function run(argv: string[]): Promise<number> {
  const program = new Command("coldstart")
    .description("Stage model weights from S3 to node-local disk, verified and atomic.")
    .version(pkg.version)
    .exitOverride()
    .showHelpAfterError("(run with --help for usage)");
  let code: number = EXIT.ok;
  const setExit = (c: number) => {
    code = c;
  };
  program.addCommand(pullCommand(setExit));
  program.addCommand(daemonCommand(setExit));
  program.addCommand(waitCommand(setExit));
  program.addCommand(doctorCommand(setExit));
  program.addCommand(cacheCommand(setExit));
  try {
    await program.parseAsync(argv);
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit through here with code 0.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    reportError(toColdstartError(err), false);
    return EXIT.failed;
  }
}
