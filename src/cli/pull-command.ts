import { Command } from "commander";
import { loadConfigFromProcess } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { toColdstartError } from "../errors.js";
import { createLogger } from "../log.js";
import { parseS3Uri } from "../s3/uri.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { printSummary, startProgress } from "./progress.js";
import { EXIT, isUsageError, reportError } from "./report.js";

/** Options groups `pull` takes from the schema. */
const GROUPS = new Set(["s3", "download", "log", "output"]);

export function pullCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("pull")
    .description("Stage every object under s3://BUCKET/PREFIX/ into DIR, keeping relative key paths.")
    .argument("<source>", "s3://BUCKET/PREFIX/")
    .requiredOption("--dest <dir>", "destination directory (created if missing)");
  const byAttr = addSchemaOptions(cmd, GROUPS);
  cmd.action(async (source: string, opts: { dest: string }) => {
    let config: Config | undefined;
    try {
      config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      setExit(await pull(source, opts.dest, config));
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, config?.output.json ?? false);
      setExit(
        isUsageError(e)
          ? EXIT.usage
          : e.code === "CS_ABORTED"
            ? /SIGTERM/.test(e.message)
              ? EXIT.terminated
              : EXIT.interrupted
            : EXIT.failed,
      );
    }
  });
  return cmd;
}

async function pull(uri: string, dest: string, config: Config): Promise<number> {
  // Loaded here, not at the top: every `coldstart` command would otherwise pay for the AWS SDK and the
  // staging engine at start-up (about a second), `wait` in an init container included.
  const [{ rateLimiterFrom, s3SourceFromConfig, stageSettingsFrom }, { StageJob }, { partWorkersFor }] =
    await Promise.all([
      import("../wiring/staging.js"),
      import("../staging/stage-job.js"),
      import("../staging/workers/pool.js"),
    ]);
  const { bucket, prefix } = parseS3Uri(uri);
  const logger = createLogger(config.log.level, 2).child({ component: "pull" });
  const source = s3SourceFromConfig(config);
  const workers = partWorkersFor(config.download.workers);
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals) =>
    abort.abort(Object.assign(new Error(`received ${sig}`), { name: "AbortError" }));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const job = new StageJob({
    source,
    bucket,
    prefix,
    dest,
    ...stageSettingsFrom(config.download),
    filters: { include: config.download.include, exclude: config.download.exclude },
    rateLimiter: rateLimiterFrom(config.download),
    signal: abort.signal,
    logger,
    runPart: workers?.run,
  });
  // A bar on a terminal; otherwise JSON lines: on stdout with --json (the summary ends them), else on
  // stderr so stdout holds only the human summary.
  const progress = startProgress(() => job.progress(), {
    json: config.output.json || !process.stderr.isTTY,
    stream: config.output.json ? process.stdout : process.stderr,
    intervalMs: config.output.progressIntervalMs,
  });
  try {
    const result = await job.run();
    progress.stop();
    printSummary(result, config.output.json);
    return EXIT.ok;
  } finally {
    progress.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await workers?.close();
    source.close();
  }
}
