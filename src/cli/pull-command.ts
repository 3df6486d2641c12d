import { Command, Option } from "commander";
import pino from "pino";
import { listOptions, loadConfigFromProcess, type OptionName } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { toColdstartError } from "../errors.js";
import { retryPolicyFrom } from "../s3/retry.js";
import { s3SourceFromConfig } from "../s3/s3-object-source.js";
import { parseS3Uri } from "../s3/uri.js";
import { RateLimiter } from "../staging/rate-limiter.js";
import { StageJob } from "../staging/stage-job.js";
import { EXIT, isUsageError, reportError } from "./main.js";
import { printSummary, startProgress } from "./progress.js";

/** Options groups `pull` takes from the schema. */
const GROUPS = new Set(["s3", "download", "log", "output"]);

/**
 * Adds every schema option of the given groups (or single options, by dotted name) as a flag;
 * returns attribute name → option name.
 */
export function addSchemaOptions(cmd: Command, groups: Set<string>): Map<string, OptionName> {
  const byAttr = new Map<string, OptionName>();
  for (const o of listOptions()) {
    if (!(groups.has(o.group) || groups.has(o.name)) || !o.spec.flag) continue;
    const env = o.spec.env.length ? ` [env: ${o.spec.env.join(", ")}]` : "";
    const def = o.spec.default !== undefined ? ` (default: ${JSON.stringify(o.spec.default)})` : "";
    const opt = new Option(o.spec.flag, `${o.spec.help}${env}${def}`);
    if (o.spec.repeatable) opt.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    cmd.addOption(opt);
    byAttr.set(opt.attributeName(), o.name);
  }
  return byAttr;
}

export function flagsOf(cmd: Command, byAttr: Map<string, OptionName>): Map<OptionName, unknown> {
  const flags = new Map<OptionName, unknown>();
  for (const [attr, value] of Object.entries(cmd.opts())) {
    const name = byAttr.get(attr);
    if (name !== undefined && value !== undefined) flags.set(name, value);
  }
  return flags;
}

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
  const { bucket, prefix } = parseS3Uri(uri);
  const logger = pino({ level: config.log.level, base: { component: "pull" } }, pino.destination(2));
  const source = s3SourceFromConfig(config);
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
    partSizeBytes: config.download.partSizeBytes,
    concurrency: config.download.concurrency,
    filters: { include: config.download.include, exclude: config.download.exclude },
    retry: retryPolicyFrom(config.download),
    requestTimeoutMs: config.download.requestTimeoutMs,
    rateLimiter:
      config.download.maxBytesPerSecond > 0 ? new RateLimiter(config.download.maxBytesPerSecond) : undefined,
    signal: abort.signal,
    logger,
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
    source.close();
  }
}
