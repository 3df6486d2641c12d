import { readdirSync, readFileSync } from "node:fs";
import { defineConfig } from "vitest/config";

/**
 * Test files that need an external server (the S3 server, Ceph RGW, started once per run by
 * test/global-setup.ts, asked for with useS3Fixture; a real containerd, startContainerd) or say
 * `Tier: integration` in their header (root network namespaces, full compiles). They form the
 * integration tier; everything else is the unit tier (`npm run test:unit`: no RGW start, no server).
 * `npm test` runs both. The unit tier alone runs three files at once (`npm run test:unit`): its
 * longest file mostly waits out a probe deadline.
 */
const NEEDS_SERVER = /\buseS3Fixture\(|\bstartContainerd\(|inject\("s3"\)|^ \* Tier: integration\b/m;
const testFiles = readdirSync("test", { recursive: true, encoding: "utf8" })
  .filter((f) => f.endsWith(".test.ts"))
  .map((f) => `test/${f}`);
const integration = testFiles.filter((f) => NEEDS_SERVER.test(readFileSync(f, "utf8")));

export default defineConfig({
  test: {
    // Integration tests share one real S3 server and spawn real child processes; two cores here.
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    projects: [
      { extends: true, test: { name: "unit", include: ["test/**/*.test.ts"], exclude: integration } },
      {
        extends: true,
        test: { name: "integration", include: integration, globalSetup: ["test/global-setup.ts"] },
      },
    ],
  },
});
