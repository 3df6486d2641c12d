import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { HeadBucketCommand } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RecordedRequest } from "../support/fault-proxy.js";
import { coldstart, finish, type Outcome } from "../support/processes.js";
import { radosgwAdmin } from "../support/rgw.js";
import { freshBucket, putFiles, seedClient } from "../support/s3.js";
import { useS3Fixture } from "../support/s3-fixture.js";
import { digests, expectedDigests } from "../support/stage.js";
import { syntheticModel } from "../support/synthetic-model.js";
import { gate, waitFor } from "../support/wait.js";

const MiB = 1024 * 1024;
const fx = useS3Fixture("cs-rotation-");

/** The access key id a request was signed with: a presigned URL's X-Amz-Credential, else the header's. */
function accessKeyOf(r: RecordedRequest): string | undefined {
  const auth = r.headers.authorization;
  const credential =
    new URLSearchParams(r.query).get("X-Amz-Credential") ??
    (typeof auth === "string" ? /Credential=([^,\s]+)/.exec(auth)?.[1] : undefined);
  return credential?.split("/")[0];
}

function newKey(name: string): { id: string; secret: string } {
  return {
    id: `CSROT${name}${randomBytes(6).toString("hex").toUpperCase()}`,
    secret: randomBytes(20).toString("hex"),
  };
}

describe("credentials that rotate during a download", () => {
  // A user of its own, with two keys: the shared test user stays as it is for the files running beside.
  const uid = `cs-rotation-${process.pid}-${Date.now().toString(36)}`;
  const keyA = newKey("A");
  const keyB = newKey("B");
  const admin = (...args: string[]) => radosgwAdmin(fx.s3.endpoint, args);

  beforeAll(async () => {
    await admin(
      "user",
      "create",
      `--uid=${uid}`,
      `--display-name=${uid}`,
      `--access-key=${keyA.id}`,
      `--secret=${keyA.secret}`,
    );
    await admin(
      "key",
      "create",
      `--uid=${uid}`,
      "--key-type=s3",
      `--access-key=${keyB.id}`,
      `--secret=${keyB.secret}`,
    );
  });
  afterAll(async () => {
    await admin("user", "rm", `--uid=${uid}`, "--purge-data");
  });

  it("signs every attempt with the chain's current key: parts after the rotation carry the new one", async () => {
    const files = syntheticModel({ shards: 2, shardBytes: 4 * MiB });
    const clientA = seedClient({ ...fx.s3, accessKeyId: keyA.id, secretAccessKey: keyA.secret });
    const rotated = gate();
    let child: ReturnType<typeof coldstart> | undefined;
    try {
      const bucket = await freshBucket(clientA, "rot");
      await putFiles(clientA, bucket, "m/", files);
      const dest = join(fx.work, "dest");

      // The SDK's chain (no key in the environment) finds this process in the shared config file, as it
      // would IRSA's or Pod Identity's sessions. Until the marker exists it gives key A as a session
      // that ends 3 s after it was issued; after, key B, good for 2 minutes. Both lie within the SDK's
      // 5-minute refresh window, so the SDK runs the process again on each signing: in the background
      // while the credentials it holds are still valid (it signs with those meanwhile), in the
      // foreground once they have expired (memoizeChain in @aws-sdk/credential-provider-node). Each run logs "start" first and then the key it gave.
      const marker = join(fx.work, "rotated");
      const runs = join(fx.work, "credential-process.log");
      const script = join(fx.work, "credential-process.sh");
      await writeFile(
        script,
        [
          "#!/bin/sh",
          `echo start >> '${runs}'`,
          `if [ -e '${marker}' ]; then id='${keyB.id}' secret='${keyB.secret}' ttl='2 minutes'`,
          `else id='${keyA.id}' secret='${keyA.secret}' ttl='3 seconds'; fi`,
          `expiration=$(date -u -d "+$ttl" +%Y-%m-%dT%H:%M:%S.%3NZ)`,
          `echo "$id $expiration" >> '${runs}'`,
          `printf '{"Version":1,"AccessKeyId":"%s","SecretAccessKey":"%s","Expiration":"%s"}\\n' \\`,
          `  "$id" "$secret" "$expiration"`,
          "",
        ].join("\n"),
        { mode: 0o755 },
      );
      /** Each finished run of the process: the key it gave and until when; and how many have started. */
      const given = async () => {
        const lines = (await readFile(runs, "utf8")).trim().split("\n");
        const done = lines.filter((l) => l !== "start").map((l) => l.split(" "));
        return {
          started: lines.length - done.length,
          done: done.map(([key, until]) => ({ key, until: Date.parse(until ?? "") })),
        };
      };
      const config = join(fx.work, "aws-config");
      await writeFile(config, `[default]\ncredential_process = ${script}\n`);

      // A part's GET, presigned by S3ObjectSource.resolveGet (listing and HEADs carry an Authorization
      // header instead). The first PASSED go through with key A. The next CONCURRENCY wait at the
      // proxy, so every download slot holds one and nothing else is signed, until the key has rotated
      // and key A is gone; then the proxy answers each of them 500 (the hook throws), never forwarding
      // it: they were signed with A. Their retries, and every part after, must be signed anew.
      const PASSED = 3;
      const CONCURRENCY = 2;
      const prefix = `/${bucket}/m/`;
      const isPartGet = (r: RecordedRequest) =>
        r.method === "GET" && r.path.startsWith(prefix) && r.query.includes("X-Amz-Credential=");
      const held: RecordedRequest[] = [];
      fx.proxy.addRule({
        match: { predicate: isPartGet },
        skip: PASSED,
        times: CONCURRENCY,
        action: {
          kind: "hook",
          fn: async (r) => {
            held.push(r);
            await rotated.opened;
            throw new Error("signed before the key rotated: not forwarded");
          },
        },
      });

      child = coldstart(
        [
          "pull",
          `s3://${bucket}/m/`,
          "--dest",
          dest,
          "--endpoint",
          fx.proxy.url,
          "--path-style",
          "--part-size",
          "1MiB",
          "--concurrency",
          String(CONCURRENCY),
          "--workers",
          "2",
          "--json",
        ],
        fx.s3,
        {
          // coldstart() puts the shared user's key in the environment; empty is unset to the SDK's chain.
          AWS_ACCESS_KEY_ID: "",
          AWS_SECRET_ACCESS_KEY: "",
          AWS_CONFIG_FILE: config,
          AWS_SHARED_CREDENTIALS_FILE: join(fx.work, "no-such-credentials-file"),
          AWS_EC2_METADATA_DISABLED: "true",
        },
      );
      let early: Outcome | undefined;
      const exited = finish(child).then((o) => (early = o));
      await waitFor(
        () => {
          if (early) throw new Error(`pull exited ${early.code} before the rotation: ${early.stderr}`);
          return held.length === CONCURRENCY;
        },
        { what: `${CONCURRENCY} part GETs held at the proxy` },
      );

      // Rotate as a session ends: the process gives B from now on; once every A it gave out has
      // expired, RGW refuses A too. A request still signed with A then fails the pull (403:
      // CS_S3_ACCESS_DENIED, not retried). Both slots are held, so nothing asks for credentials now;
      // a run that has not logged "start" yet reads the marker and gives B.
      await writeFile(marker, "");
      const quiet = await waitFor(
        async () => {
          const g = await given();
          return g.started === g.done.length && g;
        },
        { what: "the credential process's runs to finish" },
      );
      const lastA = Math.max(...quiet.done.filter((r) => r.key === keyA.id).map((r) => r.until));
      expect(lastA).toBeGreaterThan(0);
      await waitFor(() => Date.now() > lastA, { what: "every key A session to expire" });
      await admin("key", "rm", `--uid=${uid}`, "--key-type=s3", `--access-key=${keyA.id}`);
      await waitFor(
        () =>
          clientA.send(new HeadBucketCommand({ Bucket: bucket })).then(
            () => false,
            (err: { $metadata?: { httpStatusCode?: number } }) => err.$metadata?.httpStatusCode === 403,
          ),
        { what: "RGW refusing key A" },
      );
      const removedAt = fx.proxy.requests.length;
      rotated.open();

      const out = await exited;
      expect(out.code, out.stderr).toBe(0);
      expect(await digests(dest, files)).toEqual(expectedDigests(files));
      const summary = JSON.parse(out.stdout.trim().split("\n").at(-1) ?? "null");
      expect(summary.retries).toBeGreaterThanOrEqual(CONCURRENCY);

      const before = fx.proxy.requests.slice(0, removedAt);
      const after = fx.proxy.requests.slice(removedAt);
      // Before: the listing, the HEADs and the first parts, all with A, and the held pair signed with A.
      expect(new Set(before.map(accessKeyOf))).toEqual(new Set([keyA.id]));
      expect(before.filter(isPartGet)).toHaveLength(PASSED + CONCURRENCY);
      // After: only B, on the held parts' retries and on every part still to fetch.
      expect(after.filter(isPartGet).length).toBeGreaterThan(CONCURRENCY);
      expect(new Set(after.map(accessKeyOf))).toEqual(new Set([keyB.id]));
      for (const h of held) {
        expect(
          after.some((r) => isPartGet(r) && r.path === h.path && r.headers.range === h.headers.range),
          `a retry of ${h.path} ${h.headers.range}`,
        ).toBe(true);
      }
      // The SDK ran the process again and again, not once: before the rotation and after it.
      const all = (await given()).done.map((r) => r.key);
      expect(all.filter((k) => k === keyA.id).length).toBeGreaterThan(1);
      expect(all).toContain(keyB.id);
    } finally {
      rotated.open();
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      clientA.destroy();
    }
  });
});
