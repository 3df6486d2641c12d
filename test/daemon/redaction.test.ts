// Regression (issue 15, defect 1): `PUT /v1/models/x?token=<valid token>` was refused with 401, but
// the request log line carried the whole URL, token included. No credential may reach the logs, on
// any listener.
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type DaemonProcess, killDaemons, NO_GPU_FLAGS, startDaemonProcess } from "../support/processes.js";
import { useS3Fixture } from "../support/s3-fixture.js";

const fx = useS3Fixture("cs-redact-");
const daemons: DaemonProcess[] = [];

afterEach(async () => {
  await killDaemons(daemons);
});

/** One raw request (no client-side normalization); any answer is fine, only the logs matter here. */
function send(
  target: { url?: string; socketPath?: string },
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<number> {
  const base = target.url ? new URL(target.url) : undefined;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        ...(base ? { hostname: base.hostname, port: base.port } : { socketPath: target.socketPath }),
        method,
        path,
        headers,
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("logs never carry a credential", () => {
  it("redacts tokens in query strings and headers on the API, the socket, metrics, the mirror and peer routes", async () => {
    const token = randomBytes(24).toString("hex");
    const tokens = join(fx.work, "tokens");
    await writeFile(tokens, `${token}\n`);
    const content = join(fx.work, "content");
    await mkdir(join(content, "blobs", "sha256"), { recursive: true });
    const socket = join(fx.work, "run", "coldstart.sock");
    const d = await startDaemonProcess(
      [
        "--root",
        join(fx.work, "root"),
        "--socket",
        socket,
        "--token-file",
        tokens,
        "--allow-source",
        "s3://redact-*/**",
        "--endpoint",
        fx.proxy.url,
        "--path-style",
        "--mirror-listen",
        "127.0.0.1:0",
        "--mirror-content-dir",
        content,
        "--log-level",
        "trace",
        ...NO_GPU_FLAGS,
      ],
      fx.s3,
    );
    daemons.push(d);
    const mirror = String(d.logs.find((l) => l.msg === "coldstart daemon ready")?.mirror);
    const auth = { authorization: `Bearer ${token}` };
    const names = ["token", "access_token", "X-Amz-Signature", "X-Amz-Security-Token", "password", "sig"];
    const api = { url: d.api };
    const digest = `sha256:${"a".repeat(64)}`;
    const calls: [{ url?: string; socketPath?: string }, string, string, Record<string, string>][] = [];
    for (const name of names) {
      const q = `${name}=${token}`;
      calls.push(
        [api, "PUT", `/v1/models/x?${q}`, {}],
        [api, "GET", `/v1/models?${q}`, auth],
        [api, "GET", `/v1/models/x/ready?timeoutSeconds=0&${q}`, auth],
        [api, "GET", `/v1/peer/object?bucket=b&key=k&etag=e&${q}`, auth],
        [api, "GET", `/v1/peer/piece?bucket=b&key=k&etag=e&piece=0&${q}`, {}],
        [api, "GET", `/v1/peer/blob/${digest}?${q}`, auth],
        [{ socketPath: socket }, "GET", `/v1/models?${q}`, {}],
        [{ socketPath: socket }, "DELETE", `/v1/models/x?${q}`, {}],
        [{ url: d.metrics }, "GET", `/metrics?${q}`, {}],
        [{ url: d.metrics }, "GET", `/nowhere?${q}`, {}],
        [{ url: mirror }, "GET", `/v2/?${q}`, auth],
        [{ url: mirror }, "GET", `/v2/library/x/blobs/${digest}?ns=docker.io&${q}`, auth],
      );
    }
    // The whole query a credential (`?TOKEN`), a cookie, and a wrong scheme carrying it.
    calls.push(
      [api, "GET", `/v1/models?${token}`, {}],
      [api, "GET", "/v1/models", { cookie: `session=${token}` }],
      [api, "GET", "/v1/models", { authorization: `Basic ${token}` }],
      [{ socketPath: socket }, "PUT", `/v1/models/x?${token}`, { cookie: `s=${token}` }],
    );
    const statuses = [];
    for (const [target, method, path, headers] of calls)
      statuses.push(await send(target, method, path, headers));
    // The requests really reached the listeners (and the token was accepted where it was sent).
    expect(statuses).toContain(401);
    expect(statuses).toContain(200);
    d.child.kill("SIGTERM");
    const out = await d.exited;
    expect(out.code).toBe(0);
    const logged = out.stdout + out.stderr;
    expect(logged).toContain("incoming request");
    expect(logged.includes(token), "the token's bytes appear in the daemon's output").toBe(false);
    // The requests were logged (at trace level), with the parameter names kept.
    expect(logged).toContain("X-Amz-Signature=[redacted]");
    // Regression: daemon log lines carried the `component` key twice (a base binding and a child's).
    const lines = out.stdout.split("\n").filter((l) => l.startsWith("{"));
    expect(lines.length).toBeGreaterThan(10);
    const twice = lines.filter((l) => l.split('"component":').length > 2);
    expect(twice, "log lines with two component keys").toEqual([]);
    expect(lines.filter((l) => !l.includes('"component":'))).toEqual([]);
  });
});
