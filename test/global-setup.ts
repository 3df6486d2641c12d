import type { TestProject } from "vitest/node";
import { startRgw } from "./support/rgw.js";
import type { S3Endpoint } from "./support/s3.js";

/** One real S3 server (Ceph RGW) for the whole run; each test makes its own bucket. */
export default async function setup(project: TestProject) {
  const rgw = await startRgw();
  const s3: S3Endpoint = {
    endpoint: rgw.endpoint,
    accessKeyId: rgw.accessKeyId,
    secretAccessKey: rgw.secretAccessKey,
    region: rgw.region,
  };
  project.provide("s3", s3);
  return async () => {
    await rgw.stop();
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    s3: S3Endpoint;
  }
}
