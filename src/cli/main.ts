import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { type ColdstartError, toColdstartError } from "../errors.js";
import { daemonCommand } from "./daemon-command.js";
import { doctorCommand } from "./doctor-command.js";
import { pullCommand } from "./pull-command.js";
import { waitCommand } from "./wait-command.js";

/** Process exit codes: stable, documented in docs/cli.md. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130, terminated: 143 } as const;

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

/** One clear stderr line: the code, the key, the reason; with --json also a JSON line on stdout. */
export function reportError(err: ColdstartError, json: boolean): void {
  const key = err.details.key !== undefined ? ` key=${JSON.stringify(err.details.key)}` : "";
  process.stderr.write(`coldstart: ${err.code}${key}: ${err.message}\n`);
  if (json) {
    const error = {
      code: err.code,
      message: err.message,
      ...(err.details.key !== undefined ? { key: err.details.key } : {}),
    };
    process.stdout.write(`${JSON.stringify({ error })}\n`);
  }
}

export function isUsageError(err: ColdstartError): boolean {
  return (
    err.code === "CS_CONFIG_INVALID" || err.code === "CS_SOURCE_URI_INVALID" || err.code === "CS_DEST_INVALID"
  );
}
