/** How the CLI ends: exit codes and the one-line error report, shared by every subcommand. */
import type { ColdstartError } from "../errors.js";

/** Process exit codes: stable, documented in docs/cli.md. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130, terminated: 143 } as const;

/**
 * One clear stderr line: the code, the key, the reason; with --json also a JSON line on stdout. A
 * message of several lines (the AWS SDK's parse errors end with a hint on a line of their own) is
 * joined into one: scripts read the first stderr line, and docs/cli.md promises only one.
 */
export function reportError(err: ColdstartError, json: boolean): void {
  const key = err.details.key !== undefined ? ` key=${JSON.stringify(err.details.key)}` : "";
  const message = err.message.trim().replace(/\s*\n\s*/g, " ");
  process.stderr.write(`coldstart: ${err.code}${key}: ${message}\n`);
  if (json) {
    const error = {
      code: err.code,
      message,
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
