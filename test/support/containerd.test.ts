import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  buildOciImage,
  CONTAINERD_NOT_INSTALLED_MESSAGE,
  type Containerd,
  containerdAvailable,
  MEDIA_TYPES,
  startContainerd,
  writeHostsToml,
} from "./containerd.js";

const available = containerdAvailable();
const skipNote = available ? "" : ` [skipped: ${CONTAINERD_NOT_INSTALLED_MESSAGE}]`;

interface SeenRequest {
  method: string;
  path: string;
  ns: string | null;
  status: number;
  headers: Record<string, string | string[] | undefined>;
}

/** A minimal read-only OCI distribution registry: `/v2/`, manifests and blobs by digest only. */
async function startRegistryDouble(blobs: Map<string, Buffer>, manifests: Set<string>) {
  const requests: SeenRequest[] = [];
  const missing = new Set<string>();
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://registry.double");
    const seen = (status: number) =>
      requests.push({
        method: req.method ?? "",
        path: url.pathname,
        ns: url.searchParams.get("ns"),
        status,
        headers: req.headers,
      });
    if (req.method !== "GET" && req.method !== "HEAD") {
      seen(405);
      res.writeHead(405).end();
      return;
    }
    if (url.pathname === "/v2/" || url.pathname === "/v2") {
      seen(200);
      res.writeHead(200, {
        "Content-Type": "application/json",
        "Docker-Distribution-API-Version": "registry/2.0",
        "Content-Length": "2",
      });
      res.end(req.method === "HEAD" ? undefined : "{}");
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    const digest = m?.[3];
    const body = digest === undefined ? undefined : blobs.get(digest);
    const isManifest = m?.[2] === "manifests";
    if (
      digest === undefined ||
      body === undefined ||
      missing.has(digest) ||
      (isManifest && !manifests.has(digest))
    ) {
      seen(404);
      res.writeHead(404, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ errors: [{ code: isManifest ? "MANIFEST_UNKNOWN" : "BLOB_UNKNOWN" }] }));
      return;
    }
    seen(200);
    res.writeHead(200, {
      "Content-Type": isManifest ? MEDIA_TYPES.manifest : "application/octet-stream",
      "Docker-Content-Digest": digest,
      "Content-Length": String(body.length),
    });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    missing,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

function blobPath(c: Containerd, digest: string): string {
  return join(c.contentDir, "blobs", "sha256", digest.slice("sha256:".length));
}

describe("containerd test harness", () => {
  const dir = available ? mkdtempSync(join(tmpdir(), "ctd-")) : "";
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(!available)(
    `imports an offline-built OCI layout tarball into a real containerd${skipNote}`,
    async () => {
      const a = await startContainerd(join(dir, "a"));
      cleanups.push(a.stop);
      const img = await buildOciImage(dir, {
        name: "registry.invalid/test/img",
        tag: "v1",
        layers: [Buffer.from("hello layer one\n"), Buffer.from("second layer\n".repeat(100))],
      });
      expect(img.layerDigests).toHaveLength(2);

      const imported = await a.ctr(["images", "import", "--all-platforms", img.tarPath]);
      expect(imported.stderr).toBe("");
      expect(imported.code).toBe(0);

      for (const d of [img.manifestDigest, img.configDigest, ...img.layerDigests]) {
        expect(readFileSync(blobPath(a, d))).toEqual(img.blobs.get(d));
      }
      const ls = await a.ctr(["images", "ls"]);
      expect(ls.code).toBe(0);
      const row = ls.stdout.split("\n").find((l) => l.startsWith(`${img.ref} `));
      expect(row, ls.stdout).toContain(img.manifestDigest);
    },
  );

  it.skipIf(!available)(
    `pulls by digest through a hosts.toml mirror, and fails when the mirror lacks a layer${skipNote}`,
    async () => {
      const good = await buildOciImage(dir, {
        name: "registry.invalid/test/img",
        tag: "good",
        layers: [Buffer.from("mirror layer one\n"), Buffer.from("mirror layer two\n".repeat(50))],
      });
      const bad = await buildOciImage(dir, {
        name: "registry.invalid/test/img",
        tag: "bad",
        layers: [Buffer.from("other layer one\n"), Buffer.from("other layer two\n")],
      });
      const blobs = new Map([...good.blobs, ...bad.blobs]);
      const registry = await startRegistryDouble(blobs, new Set([good.manifestDigest, bad.manifestDigest]));
      cleanups.push(registry.close);
      const b = await startContainerd(join(dir, "b"));
      cleanups.push(b.stop);
      const certsDir = join(dir, "certs.d");
      const hostsToml = await writeHostsToml(certsDir, "registry.invalid", registry.url, {
        "X-Test-Header": "mirror",
      });
      expect(readFileSync(hostsToml, "utf8")).toContain(`[host."${registry.url}"]`);

      const ref = `registry.invalid/test/img@${good.manifestDigest}`;
      const pulled = await b.ctr(["images", "pull", "--hosts-dir", certsDir, ref]);
      expect(pulled.code, `${pulled.stdout}\n${pulled.stderr}`).toBe(0);

      const ok = registry.requests.filter((r) => r.status === 200 && r.path !== "/v2/");
      const paths = ok.map((r) => `${r.method} ${r.path}`);
      expect(paths).toContain(`GET /v2/test/img/manifests/${good.manifestDigest}`);
      for (const d of [good.configDigest, ...good.layerDigests]) {
        expect(paths).toContain(`GET /v2/test/img/blobs/${d}`);
      }
      for (const r of ok) {
        expect(r.ns).toBe("registry.invalid");
        expect(r.headers["x-test-header"]).toBe("mirror");
      }
      for (const d of [good.manifestDigest, good.configDigest, ...good.layerDigests]) {
        expect(readFileSync(blobPath(b, d))).toEqual(good.blobs.get(d));
      }
      const ls = await b.ctr(["images", "ls", "-q"]);
      expect(ls.stdout.split("\n")).toContain(ref);

      // The mirror 404s one layer; the only other host is https://registry.invalid, which does not resolve.
      const gone = bad.layerDigests[1] as string;
      registry.missing.add(gone);
      registry.requests.length = 0;
      const failed = await b.ctr([
        "images",
        "pull",
        "--hosts-dir",
        certsDir,
        `registry.invalid/test/img@${bad.manifestDigest}`,
      ]);
      expect(failed.code).not.toBe(0);
      expect(failed.stderr).toContain(gone);
      expect(registry.requests.some((r) => r.status === 404 && r.path === `/v2/test/img/blobs/${gone}`)).toBe(
        true,
      );
      expect(existsSync(blobPath(b, gone))).toBe(false);
    },
  );
});
