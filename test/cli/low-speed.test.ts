// Regression (issue 15, defect 6): a server that sent a 20,000-byte object at 1 byte/s kept
// `coldstart pull --request-timeout-ms 3000 --max-attempts 2` running with no retry and no end: the
// inactivity timer only fires when no byte arrives. A request below the low-speed limit for the
// low-speed time is abandoned, retried with its own reason, and counts against --max-attempts.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { coldstart, finish } from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { file } from "../support/synthetic-model.js";

const fx = useS3Fixture("cs-lowspeed-");

describe("coldstart pull against a slow drip", () => {
  it("abandons a body below the low-speed limit, retries it as low_speed, and fails once the attempts are spent", async () => {
    const bucket = await freshBucket(fx.client, "ls");
    await putFiles(fx.client, bucket, "m/", [file("w.bin", randomBytes(20_000))]);
    // Every GET of the object drips: 10 bytes every 100 ms (about 100 bytes/s), never silent for long.
    fx.proxy.addRule({
      match: { method: "GET", path: `/${bucket}/m/w.bin` },
      action: { kind: "drip", bytes: 10, everyMs: 100 },
    });
    const out = await finish(
      coldstart(
        [
          "pull",
          `s3://${bucket}/m/`,
          "--dest",
          join(fx.work, "d"),
          "--endpoint",
          fx.proxy.url,
          "--path-style",
          "--request-timeout-ms",
          "3000",
          "--max-attempts",
          "2",
          "--low-speed-limit",
          "1KiB",
          "--low-speed-time",
          "2s",
          "--log-level",
          "warn",
        ],
        fx.s3,
      ),
    );
    expect(out.code, out.stderr).toBe(1);
    const lines = out.stderr.trim().split("\n");
    // One retry, for its own reason, then the failure line naming the rule.
    // (Without a terminal, progress goes to stderr as JSON lines too; log lines have a `msg`.)
    const logs = lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const retries = logs.filter((l) => l.msg !== undefined);
    expect(retries.map((r) => [r.msg, r.reason])).toEqual([["retrying", "low_speed"]]);
    expect(lines.at(-1)).toMatch(
      /^coldstart: CS_RETRIES_EXHAUSTED key="m\/w\.bin": GET m\/w\.bin failed 2 times in a row without progress; .*below the 1024 bytes\/s minimum \(low speed\)$/,
    );
    // Both attempts were real GETs of the object (the second resumed where the first stopped).
    const gets = fx.proxy.requests.filter((r) => r.method === "GET" && r.path === `/${bucket}/m/w.bin`);
    expect(gets).toHaveLength(2);
  });
});
