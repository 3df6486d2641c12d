/**
 * Config to staging components, for both composition roots: the daemon (src/main.ts) and
 * `coldstart pull` (src/cli/pull-command.ts) build their S3 source and their jobs here, so a job
 * staged by either runs on the same settings. Components themselves never read the config.
 */
import type { Config } from "../config/schema.js";
import type { Metrics } from "../metrics/metrics.js";
import { S3ObjectSource } from "../s3/s3-object-source.js";
import type { StageSettings } from "../staging/job-types.js";
import { RateLimiter } from "../staging/rate-limiter.js";

export function stageSettingsFrom(d: Config["download"]): StageSettings {
  return {
    partSizeBytes: d.partSizeBytes,
    concurrency: d.concurrency,
    retry: { maxAttempts: d.maxAttempts, baseDelayMs: d.retryBaseDelayMs, maxDelayMs: d.retryMaxDelayMs },
    requestTimeoutMs: d.requestTimeoutMs,
    lowSpeed: { bytesPerSecond: d.lowSpeedBytesPerSecond, windowMs: d.lowSpeedTimeMs },
  };
}

/** download.maxBytesPerSecond as a limiter every job shares; undefined when uncapped. */
export function rateLimiterFrom(d: Config["download"]): RateLimiter | undefined {
  return d.maxBytesPerSecond > 0 ? new RateLimiter(d.maxBytesPerSecond) : undefined;
}

/**
 * The S3 source: sockets for every ranged GET of the download budget plus headroom for listings,
 * HEADs and attribute calls.
 */
export function s3SourceFromConfig(
  config: Pick<Config, "s3" | "download">,
  options: { metrics?: Metrics } = {},
): S3ObjectSource {
  return new S3ObjectSource({
    region: config.s3.region,
    endpoint: config.s3.endpoint,
    pathStyle: config.s3.pathStyle,
    maxSockets: config.download.concurrency + 8,
    requestTimeoutMs: config.download.requestTimeoutMs,
    metrics: options.metrics,
  });
}
