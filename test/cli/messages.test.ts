// Regressions (issue 15, contract mismatches): missing AWS credentials gave the SDK's bare "Could not
// load credentials from any providers" with no hint; CS_NO_OBJECTS caused by --include/--exclude did
// not say how many keys were listed and how many the filters removed.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { coldstart, finish } from "../support/processes.js";
import { freshBucket, putFiles } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { file } from "../support/synthetic-model.js";

const fx = useS3Fixture("cs-messages-");

describe("failure messages that say what to do", () => {
  it("no credentials anywhere: one line naming the chain and the variables to set", async () => {
    const bucket = await freshBucket(fx.client, "msg");
    const out = await finish(
      coldstart(
        [
          "pull",
          `s3://${bucket}/m/`,
          "--dest",
          join(fx.work, "d"),
          "--endpoint",
          fx.s3.endpoint,
          "--path-style",
        ],
        fx.s3,
        {
          AWS_ACCESS_KEY_ID: "",
          AWS_SECRET_ACCESS_KEY: "",
          HOME: fx.work,
          // Nothing to ask at 169.254.169.254 here; the chain still names it.
          AWS_EC2_METADATA_DISABLED: "true",
        },
      ),
    );
    expect(out.code).toBe(1);
    const lines = out.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^coldstart: CS_S3_ACCESS_DENIED key="s3:\/\/msg-[^"]+\/m\/": LIST s3:.*: no AWS credentials \(/,
    );
    for (const hint of ["AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "Pod Identity"]) {
      expect(lines[0]).toContain(hint);
    }
  });

  it("CS_NO_OBJECTS says how many keys were listed and how many the filters removed", async () => {
    const bucket = await freshBucket(fx.client, "msg");
    await putFiles(fx.client, bucket, "m/", [
      file("a.json", Buffer.from("{}")),
      file("b.json", Buffer.from("{}")),
    ]);
    const pull = (prefix: string, ...flags: string[]) =>
      finish(
        coldstart(
          [
            "pull",
            `s3://${bucket}/${prefix}`,
            "--dest",
            join(fx.work, "d"),
            "--endpoint",
            fx.s3.endpoint,
            "--path-style",
            ...flags,
          ],
          fx.s3,
        ),
      );
    const filtered = await pull("m/", "--include", "*.safetensors");
    expect(filtered.code).toBe(1);
    expect(filtered.stderr.trim()).toMatch(
      /CS_NO_OBJECTS .*: 2 listed, all 2 removed by the filters \(include \["\*\.safetensors"\], exclude \[\]\)$/,
    );
    const empty = await pull("nothing-here/");
    expect(empty.stderr.trim()).toMatch(
      /CS_NO_OBJECTS .*: the listing returned no objects \(is the prefix right/,
    );
  });
});
