import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { loadConfigFromProcess } from "../config/load.js";
import { ColdstartError, toColdstartError } from "../errors.js";
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

/** The `coldstart` command tree; each action reports its exit code through `setExit`. */
export function buildProgram(setExit: (code: number) => void): Command {
  return new Command("coldstart")
    .description("Stage model weights from S3 to node-local disk, verified and atomic.")
    .version(pkg.version)
    .addCommand(pullCommand(setExit))
    .addCommand(daemonCommand(setExit))
    .addCommand(waitCommand(setExit))
    .addCommand(doctorCommand(setExit))
    .addCommand(cacheCommand(setExit));
}

/** Every command of the tree, depth first, the root included. */
export function allCommands(cmd: Command): Command[] {
  return [cmd, ...cmd.commands.flatMap((c) => allCommands(c as Command))];
}

/** "coldstart cache key" for the key subcommand. */
export function commandPath(cmd: Command): string {
  return cmd.parent ? `${commandPath(cmd.parent as Command)} ${cmd.name()}` : cmd.name();
}

/** Runs the `coldstart` command line and resolves to the process exit code (never calls process.exit). */
export async function run(argv: string[]): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram((c) => {
    code = c;
  });
  // Commander parses each subcommand with that command's own settings, and addCommand does not pass
  // the root's on: without this, a subcommand's usage error is commander's process.exit(1).
  let failedIn = program;
  for (const cmd of allCommands(program)) {
    cmd
      .exitOverride((err) => {
        failedIn = cmd;
        throw err;
      })
      .showSuggestionAfterError(true)
      // Reported below, as one line.
      .configureOutput({ outputError: () => {} });
  }
  try {
    await program.parseAsync(argv);
    return code;
  } catch (err) {
    if (!(err instanceof CommanderError)) {
      reportError(toColdstartError(err), false);
      return EXIT.failed;
    }
    // --help and --version exit through here with code 0.
    if (err.exitCode === 0) return EXIT.ok;
    // No subcommand given: commander has printed the help on stderr.
    if (err.code === "commander.help") return EXIT.usage;
    reportError(usageError(err, commandPath(failedIn)), wantsJson(argv));
    return EXIT.usage;
  }
}

/**
 * Commander's message as one line in the catalog's terms: "error: unknown option '--concurency'\n
 * (Did you mean --concurrency?)" becomes "unknown option '--concurency' (did you mean
 * --concurrency?); see coldstart pull --help".
 */
function usageError(err: CommanderError, command: string): ColdstartError {
  const what = err.message
    .replace(/^error: /, "")
    .replace(/\s*\(Did you mean (.*)\?\)/, " (did you mean $1?)")
    .replace(/\s*\n\s*/g, " ")
    .replace(/\.$/, "");
  return new ColdstartError("CS_CONFIG_INVALID", `${what}; see ${command} --help`, { cause: err });
}

/** Whether a command line that did not parse asked for JSON output (--json, or COLDSTART_JSON). */
function wantsJson(argv: string[]): boolean {
  if (argv.includes("--json")) return true;
  try {
    return loadConfigFromProcess().output.json;
  } catch {
    return false;
  }
}
