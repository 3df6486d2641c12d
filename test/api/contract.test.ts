// Regressions (issue 15, contract mismatches): an API body with an unknown field was answered "body
// must NOT have additional properties" without naming the field; the metrics listener's 404 was the
// web framework's default body, not the `CS_` error shape every other listener uses.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.js";
import { buildMetricsApp } from "../../src/api/metrics-app.js";
import { loadConfig } from "../../src/config/load.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { S3ObjectSource } from "../../src/s3/s3-object-source.js";
import { SlotScheduler } from "../../src/staging/scheduler.js";
import { testManager } from "../support/manager.js";

let root: string;
let api: ReturnType<typeof buildApp>;
let metricsApp: ReturnType<typeof buildMetricsApp>;
let source: S3ObjectSource;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "cs-contract-"));
  const config = loadConfig({ env: { COLDSTART_ROOT: root, COLDSTART_SOURCES_ALLOW: "s3://b/**" } });
  const logger = pino({ level: "silent" });
  // Nothing here reaches S3: every request is refused before a job could start.
  source = new S3ObjectSource({
    region: "us-east-1",
    endpoint: "http://127.0.0.1:9",
    maxSockets: 1,
    requestTimeoutMs: 1000,
  });
  const manager = await testManager({
    root,
    source,
    scheduler: new SlotScheduler(1),
    config,
    logger,
  });
  const metrics = new Metrics(undefined, { defaultMetrics: false });
  api = buildApp(
    { manager, logger, metrics, tokens: undefined, bodyLimitBytes: 4096, isReady: () => true },
    "tcp",
  );
  metricsApp = buildMetricsApp({ metrics, logger, isReady: () => true, mirrorCheck: () => undefined });
});

afterAll(async () => {
  await api.close();
  await metricsApp.close();
  source.close();
  await rm(root, { recursive: true, force: true });
});

describe("API error contract", () => {
  it("names an unknown body field in the message and in details.field", async () => {
    const res = await api.inject({
      method: "PUT",
      url: "/v1/models/m",
      payload: { source: "s3://b/m/", pinned: true },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({
      error: {
        code: "CS_REQUEST_INVALID",
        message: "body.pinned is not a known field",
        details: { field: "pinned" },
      },
    });
  });

  it("names a missing or mistyped field the same way", async () => {
    const missing = await api.inject({ method: "PUT", url: "/v1/models/m", payload: { include: ["*"] } });
    expect(missing.json().error).toMatchObject({ code: "CS_REQUEST_INVALID", details: { field: "source" } });
    const typed = await api.inject({ method: "PATCH", url: "/v1/models/m", payload: { pin: "yes" } });
    expect(typed.json().error).toMatchObject({
      code: "CS_REQUEST_INVALID",
      message: "body.pin must be boolean",
      details: { field: "pin" },
    });
    const nested = await api.inject({
      method: "PUT",
      url: "/v1/models/m",
      payload: { source: "s3://b/m/", include: ["*", 3] },
    });
    expect(nested.json().error).toMatchObject({ details: { field: "include.1" } });
  });

  it("answers an unknown query parameter of a peer route naming it", async () => {
    const res = await api.inject({ method: "GET", url: "/v1/peer/object?bucket=b&key=k&etag=e&tokn=x" });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({
      code: "CS_REQUEST_INVALID",
      message: "querystring.tokn is not a known field",
      details: { field: "tokn" },
    });
  });

  it("the metrics listener's 404 is the CS_ error shape", async () => {
    const res = await metricsApp.inject({ method: "GET", url: "/nowhere?x=1" });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: { code: "CS_REQUEST_INVALID", message: "no route GET /nowhere" } });
    expect((await metricsApp.inject({ method: "GET", url: "/livez" })).statusCode).toBe(200);
  });
});
