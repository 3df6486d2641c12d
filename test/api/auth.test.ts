/**
 * Bearer tokens and their scopes (docs/api.md, "Scoped credentials"): token files that name their
 * option when they cannot be used, reload and tell listeners, and the verdict each token gets for
 * each scope. The same checks over HTTP, with real daemons: test/api/scoped-tokens.test.ts.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  authorize,
  mirrorToken,
  onTokensReloaded,
  peerToken,
  type ScopedTokens,
  TokenFile,
} from "../../src/api/auth.js";
import { loadConfig } from "../../src/config/load.js";
import { expectColdstartError, thrownBy } from "../support/expect-error.js";
import { waitFor } from "../support/wait.js";

let dir: string;
const opened: TokenFile[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-auth-"));
});
afterEach(async () => {
  for (const t of opened.splice(0)) t.close();
  await rm(dir, { recursive: true, force: true });
});

async function tokenFile(name: string, text: string, field?: string): Promise<TokenFile> {
  const path = join(dir, name);
  await writeFile(path, text);
  const t = new TokenFile(path, { pollMs: 50, ...(field ? { field } : {}) });
  opened.push(t);
  return t;
}

const bearer = (t: string) => `Bearer ${t}`;

describe("token files", () => {
  it("a missing or empty file is a config error naming its option (daemon.tokenFile by default)", async () => {
    const missing = expectColdstartError(
      thrownBy(() => new TokenFile(join(dir, "absent"), { field: "peers.tokenFile" })),
      "CS_CONFIG_INVALID",
    );
    expect(missing.message).toMatch(/^peers\.tokenFile .*absent cannot be read/);
    expect(missing.details).toEqual({ field: "peers.tokenFile", value: join(dir, "absent") });

    await writeFile(join(dir, "empty"), "# nothing yet\n\n");
    const empty = expectColdstartError(
      thrownBy(() => new TokenFile(join(dir, "empty"), { field: "mirror.tokenFile" })),
      "CS_CONFIG_INVALID",
    );
    expect(empty.message).toBe(`mirror.tokenFile ${join(dir, "empty")} holds no token`);
    expect(empty.details.field).toBe("mirror.tokenFile");

    const api = expectColdstartError(
      thrownBy(() => new TokenFile(join(dir, "absent"))),
      "CS_CONFIG_INVALID",
    );
    expect(api.details.field).toBe("daemon.tokenFile");
  });

  it("tells its listeners after a reload that changed it, not on start", async () => {
    const t = await tokenFile("peer", "p1\n", "peers.tokenFile");
    const other = await tokenFile("mirror", "m1\n", "mirror.tokenFile");
    let calls = 0;
    const off = onTokensReloaded({ tokens: undefined, peerTokens: t, mirrorTokens: other }, () => calls++);
    expect(calls).toBe(0);
    await writeFile(join(dir, "peer"), "p2\np1\n");
    await waitFor(() => t.first === "p2");
    await waitFor(() => calls === 1);
    expect(t.accepts("p1") && t.accepts("p2")).toBe(true);
    off();
    await writeFile(join(dir, "mirror"), "m2\n");
    await waitFor(() => other.first === "m2");
    expect(calls).toBe(1);
  });
});

describe("scopes", () => {
  it("without scoped files the API token reaches everything, as before they existed", async () => {
    const t: ScopedTokens = { tokens: await tokenFile("api", "a1\n") };
    for (const scope of ["api", "peer", "mirror"] as const) {
      expect(authorize(t, bearer("a1"), scope)).toEqual({ ok: true });
      expect(authorize(t, bearer("nope"), scope)).toEqual({ ok: false, reason: "unauthorized" });
      expect(authorize(t, undefined, scope)).toEqual({ ok: false, reason: "unauthorized" });
    }
    expect([peerToken(t), mirrorToken(t)]).toEqual(["a1", "a1"]);
    // daemon.auth none: nothing is checked.
    expect(authorize({ tokens: undefined }, undefined, "api")).toEqual({ ok: true });
  });

  it("a peer token reaches the peer routes only, a mirror token the mirror only; the API token all", async () => {
    const t: ScopedTokens = {
      tokens: await tokenFile("api", "a1\n"),
      peerTokens: await tokenFile("peer", "p1\n", "peers.tokenFile"),
      mirrorTokens: await tokenFile("mirror", "m1\n", "mirror.tokenFile"),
    };
    const verdicts = (token: string) =>
      (["api", "peer", "mirror"] as const).map((scope) => authorize(t, bearer(token), scope));
    const ok = { ok: true };
    expect(verdicts("a1")).toEqual([ok, ok, ok]);
    expect(verdicts("p1")).toEqual([
      { ok: false, reason: "forbidden", scopes: ["peer"] },
      ok,
      { ok: false, reason: "forbidden", scopes: ["peer"] },
    ]);
    expect(verdicts("m1")).toEqual([
      { ok: false, reason: "forbidden", scopes: ["mirror"] },
      { ok: false, reason: "forbidden", scopes: ["mirror"] },
      ok,
    ]);
    const unauthorized = { ok: false, reason: "unauthorized" };
    expect(verdicts("x1")).toEqual([unauthorized, unauthorized, unauthorized]);
    // Not a bearer header at all.
    expect(authorize(t, "Basic cDE6", "peer")).toEqual(unauthorized);
    expect(authorize(t, "Bearer p1 extra", "peer")).toEqual(unauthorized);
    // What this daemon presents: its peers get the peer token, containerd the mirror token.
    expect([peerToken(t), mirrorToken(t)]).toEqual(["p1", "m1"]);
  });

  it("the options: peers.tokenFile and mirror.tokenFile from env and flags, unset by default", () => {
    expect([loadConfig({ env: {} }).peers.tokenFile, loadConfig({ env: {} }).mirror.tokenFile]).toEqual([
      undefined,
      undefined,
    ]);
    const c = loadConfig({
      env: { COLDSTART_PEER_TOKEN_FILE: "/etc/coldstart/peer-tokens/tokens" },
      flags: new Map([["mirror.tokenFile", "/etc/coldstart/mirror-tokens/tokens"]]),
    });
    expect(c.peers.tokenFile).toBe("/etc/coldstart/peer-tokens/tokens");
    expect(c.mirror.tokenFile).toBe("/etc/coldstart/mirror-tokens/tokens");
  });
});
