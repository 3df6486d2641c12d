import bytes from "bytes-iec";
import { z } from "zod";

/**
 * The one config schema. Each option lists, side by side, its type (a zod schema that also coerces
 * strings from env and flags), default, unit (in the name), environment variables (first set wins),
 * CLI flag and help. docs/configuration.md documents every option; a test keeps the two in step.
 */
export interface OptionSpec<S extends z.ZodType = z.ZodType> {
  /** Validates and coerces a raw value (string from env/flag, or a typed default). */
  schema: S;
  /** Used when no flag or env var sets the option. */
  default: z.input<S> | undefined;
  /** Environment variables, highest precedence first. */
  env: readonly string[];
  /** Commander flag spec, e.g. "--part-size <size>". Absent: not settable from the command line. */
  flag?: string;
  /** Repeatable flag (collects into an array). */
  repeatable?: boolean;
  help: string;
}

function option<S extends z.ZodType>(spec: OptionSpec<S>): OptionSpec<S> {
  return spec;
}

/** A byte size: a whole number of bytes or a string with a unit (`8MiB`, `16 MiB`, `8MB` = 8,000,000). */
const byteSize = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const n = typeof v === "number" ? v : bytes.parse(v.trim());
  if (n === null || !Number.isSafeInteger(n)) {
    ctx.addIssue({
      code: "custom",
      message: `expected a byte size like 8MiB or 8388608, got ${JSON.stringify(v)}`,
    });
    return z.NEVER;
  }
  return n;
});

const boolish = z.union([z.boolean(), z.enum(["true", "false", "1", "0", "yes", "no"])]).transform((v) => {
  return typeof v === "boolean" ? v : v === "true" || v === "1" || v === "yes";
});

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

/** Comma-separated list from env, array from repeatable flags. */
const stringList = z
  .union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(",")).map((s) => s.trim()).filter((s) => s.length > 0));

const MiB = 1024 * 1024;

export const schema = {
  s3: {
    endpoint: option({
      schema: z.url({ protocol: /^https?$/ }).optional(),
      default: undefined,
      env: ["COLDSTART_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
      flag: "--endpoint <url>",
      help: "S3 endpoint URL for S3-compatible stores; unset means AWS S3 for the region.",
    }),
    region: option({
      schema: z.string().regex(/^[a-z0-9-]{1,64}$/),
      default: "us-east-1",
      env: ["COLDSTART_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
      flag: "--region <region>",
      help: "S3 region used for signing.",
    }),
    pathStyle: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_S3_PATH_STYLE"],
      flag: "--path-style",
      help: "Address buckets as https://endpoint/BUCKET/KEY instead of https://BUCKET.endpoint/KEY.",
    }),
  },
  download: {
    concurrency: option({
      schema: int(1, 1024),
      default: 32,
      env: ["COLDSTART_CONCURRENCY"],
      flag: "--concurrency <n>",
      help: "Ranged GETs in flight at once, across all files of a job (also the HTTP agent's socket count).",
    }),
    partSizeBytes: option({
      schema: byteSize.pipe(
        z
          .number()
          .int()
          .min(MiB)
          .max(5 * 1024 * MiB),
      ),
      default: 8 * MiB,
      env: ["COLDSTART_PART_SIZE"],
      flag: "--part-size <size>",
      help: "Bytes per ranged GET (accepts units: 8MiB, 16MiB). Multipart objects use their own part boundaries.",
    }),
    include: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_INCLUDE"],
      flag: "--include <glob>",
      repeatable: true,
      help: "Stage only keys (relative to the prefix) matching one of these globs. Repeatable.",
    }),
    exclude: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_EXCLUDE"],
      flag: "--exclude <glob>",
      repeatable: true,
      help: "Skip keys (relative to the prefix) matching any of these globs; wins over --include. Repeatable.",
    }),
    requestTimeoutMs: option({
      schema: int(100, 600_000),
      default: 20_000,
      env: ["COLDSTART_REQUEST_TIMEOUT_MS"],
      flag: "--request-timeout-ms <ms>",
      help: "Inactivity timeout per request: no response or no body bytes for this long counts as a stall and is retried.",
    }),
    maxAttempts: option({
      schema: int(1, 100),
      default: 10,
      env: ["COLDSTART_MAX_ATTEMPTS"],
      flag: "--max-attempts <n>",
      help: "Attempts per request (first try included) before the file fails with CS_RETRIES_EXHAUSTED.",
    }),
    retryBaseDelayMs: option({
      schema: int(1, 60_000),
      default: 100,
      env: ["COLDSTART_RETRY_BASE_DELAY_MS"],
      flag: "--retry-base-delay-ms <ms>",
      help: "Base of the exponential backoff (full jitter) between attempts.",
    }),
    retryMaxDelayMs: option({
      schema: int(1, 600_000),
      default: 20_000,
      env: ["COLDSTART_RETRY_MAX_DELAY_MS"],
      flag: "--retry-max-delay-ms <ms>",
      help: "Cap of the backoff between attempts.",
    }),
  },
  log: {
    level: option({
      schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
      default: "warn",
      env: ["COLDSTART_LOG_LEVEL"],
      flag: "--log-level <level>",
      help: "Structured log level (JSON logs on stderr).",
    }),
  },
  output: {
    json: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_JSON"],
      flag: "--json",
      help: "Print progress as JSON lines and a JSON summary as the last line.",
    }),
    progressIntervalMs: option({
      schema: int(100, 3_600_000),
      default: 2_000,
      env: ["COLDSTART_PROGRESS_INTERVAL_MS"],
      flag: "--progress-interval-ms <ms>",
      help: "How often to print a JSON progress line when not on a TTY.",
    }),
  },
} as const;

export type Schema = typeof schema;
export type Group = keyof Schema;

/** The validated, frozen configuration. */
type OutputOf<T> = T extends OptionSpec<infer S> ? z.output<S> : never;
export type Config = {
  readonly [G in Group]: { readonly [K in keyof Schema[G]]: OutputOf<Schema[G][K]> };
};
