import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { S3Client } from "@aws-sdk/client-s3";
import { afterAll, afterEach, beforeAll, beforeEach, inject } from "vitest";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.js";
import { type S3Endpoint, seedClient } from "./s3.js";

export interface S3Fixture {
  s3: S3Endpoint;
  /** Seeding client straight to the server. */
  client: S3Client;
  /** Fault proxy in front of the server; rules and stats are cleared before each test. */
  proxy: FaultProxy;
  /** A fresh temporary directory per test, removed after it. */
  work: string;
}

/** Registers the hooks that give each test of the file the shared RGW, a proxy and a work dir. */
export function useS3Fixture(prefix: string): S3Fixture {
  const fx = { s3: inject("s3") } as S3Fixture;
  beforeAll(async () => {
    fx.client = seedClient(fx.s3);
    fx.proxy = await startFaultProxy(fx.s3.endpoint);
  });
  afterAll(async () => {
    fx.client.destroy();
    await fx.proxy.close();
  });
  beforeEach(async () => {
    fx.work = await mkdtemp(join(tmpdir(), prefix));
    fx.proxy.clearRules();
    fx.proxy.resetStats();
  });
  afterEach(async () => {
    await rm(fx.work, { recursive: true, force: true });
  });
  return fx;
}
