/**
 * The ceiling bench's origin: nginx on loopback serving the model's files with sendfile, over HTTP
 * and HTTPS, answering what the contenders ask an S3 endpoint (path-style) well enough to stage a
 * model. It is NOT S3: no authentication (nginx ignores the SigV4 Authorization header), no checksums,
 * no multipart objects, one static listing. What it answers:
 *
 * - ListObjectsV2 (`GET /BUCKET?list-type=2&prefix=model%2F…`): a static XML document written here
 *   from the files' sizes and the ETags nginx itself sends (`"<mtime hex>-<size hex>"`); another
 *   prefix gets an empty listing. The query is matched on `$args`: nginx cannot name `$arg_list-type`
 *   (variable names stop at the hyphen).
 * - HEAD and GET of `/BUCKET/KEY`, with `Range` and `If-Match` (nginx's static handler honours both:
 *   412 when the ETag differs, after which nginx closes the connection although it said keep-alive),
 *   ETag and Last-Modified.
 * - Errors as S3's XML (NoSuchKey, PreconditionFailed, InvalidRange, NotImplemented), so an SDK reads
 *   a code; GetObjectAttributes (`?attributes`) and ListObjects v1 answer 501 NotImplemented.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { Agent as HttpsAgent } from "node:https";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import {
  GetObjectAttributesCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
} from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { ModelFile } from "./model.js";
import type { Teardown } from "./teardown.js";

export type Protocol = "http" | "https";

export interface OriginOptions {
  /** nginx's own files: config, certificates, logs, temp paths. */
  dir: string;
  /** The served tree: `root/<bucket>/<prefix><relPath>` holds the model. */
  root: string;
  bucket: string;
  /** The model's key prefix, ending in "/". */
  prefix: string;
  files: ModelFile[];
}

export interface Origin {
  endpoints: Record<Protocol, string>;
  /** The CA that signed the HTTPS certificate (PEM): clients are told to trust it. */
  caFile: string;
  /** nginx's access log: one line per request, `status method bytes_sent "request line"`. */
  accessLog: string;
  /** `nginx/1.22.1, OpenSSL 3.0.x`. */
  version: string;
  /** nginx's master process (its workers are its children). */
  pid: number;
}

/** Writes certificates, listing and config, starts nginx and registers its stop with `teardown`. */
export async function startOrigin(o: OriginOptions, teardown: Teardown): Promise<Origin> {
  mkdirSync(join(o.dir, "tmp"), { recursive: true });
  const caFile = makeCertificates(o.dir);
  writeListings(o);
  writeErrors(o.root);
  const ports = { http: await freePort(), https: await freePort() };
  const conf = join(o.dir, "nginx.conf");
  const accessLog = join(o.dir, "access.log");
  writeFileSync(conf, nginxConfig(o, ports, accessLog));
  try {
    execFileSync("nginx", ["-t", "-q", "-p", o.dir, "-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (err) {
    throw new Error(`nginx rejects the generated ${conf}: ${String((err as { stderr?: Buffer }).stderr)}`);
  }
  const child = spawn("nginx", ["-p", o.dir, "-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d;
  });
  teardown.add("stop nginx", () => stopProcess(child));
  for (const port of Object.values(ports)) await waitForPort(port, child, () => stderr);
  return {
    endpoints: { http: `http://127.0.0.1:${ports.http}`, https: `https://127.0.0.1:${ports.https}` },
    caFile,
    accessLog,
    version: nginxVersion(),
    pid: child.pid as number,
  };
}

/** The ETag nginx sends for a static file: `"%xT-%xO"`, last-modified seconds and size in hex. */
export function nginxEtag(path: string): { etag: string; size: number; mtimeSeconds: number } {
  const st = statSync(path, { bigint: true });
  const mtimeSeconds = Number(st.mtimeNs / 1_000_000_000n);
  return {
    etag: `"${mtimeSeconds.toString(16)}-${st.size.toString(16)}"`,
    size: Number(st.size),
    mtimeSeconds,
  };
}

function writeListings(o: OriginOptions): void {
  const dir = join(o.root, ".listing");
  mkdirSync(dir, { recursive: true });
  const contents = o.files.map((f) => {
    const { etag, size, mtimeSeconds } = nginxEtag(join(o.root, o.bucket, o.prefix, f.relPath));
    return (
      `<Contents><Key>${xml(o.prefix + f.relPath)}</Key>` +
      `<LastModified>${new Date(mtimeSeconds * 1000).toISOString()}</LastModified>` +
      `<ETag>${xml(etag)}</ETag><Size>${size}</Size><StorageClass>STANDARD</StorageClass></Contents>`
    );
  });
  const doc = (prefix: string, items: string[]) =>
    `<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
    `<Name>${xml(o.bucket)}</Name><Prefix>${xml(prefix)}</Prefix><KeyCount>${items.length}</KeyCount>` +
    `<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>${items.join("")}</ListBucketResult>\n`;
  writeFileSync(join(dir, "model.xml"), doc(o.prefix, contents));
  writeFileSync(join(dir, "empty.xml"), doc("", []));
}

const ERRORS: Record<number, [string, string]> = {
  403: ["AccessDenied", "Access Denied"],
  404: ["NoSuchKey", "The specified key does not exist."],
  412: ["PreconditionFailed", "At least one of the pre-conditions you specified did not hold"],
  416: ["InvalidRange", "The requested range is not satisfiable"],
  501: ["NotImplemented", "This bench origin (nginx, not S3) does not implement this request."],
};

function writeErrors(root: string): void {
  const dir = join(root, ".errors");
  mkdirSync(dir, { recursive: true });
  for (const [status, [code, message]] of Object.entries(ERRORS))
    writeFileSync(
      join(dir, `${status}.xml`),
      `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>\n`,
    );
}

function nginxConfig(o: OriginOptions, ports: Record<Protocol, number>, accessLog: string): string {
  const d = o.dir;
  const bucket = o.bucket.replace(/[^A-Za-z0-9.-]/g, "");
  const prefix = o.prefix.replace(/\/$/, "").replace(/[^A-Za-z0-9._-]/g, "");
  return `# Generated by bench/ceiling/origin.ts: an S3 look-alike for the ceiling bench (not S3).
daemon off;
master_process on;
# The bench's tree is root's and private (mkdtemp, 0700): workers read it as root.
user root;
worker_processes auto;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 1024; }
http {
  types { }
  default_type application/octet-stream;
  server_tokens off;
  log_format ceiling '$status $request_method $bytes_sent "$request"';
  access_log ${accessLog} ceiling;
  client_body_temp_path ${d}/tmp/body;
  proxy_temp_path ${d}/tmp/proxy;
  fastcgi_temp_path ${d}/tmp/fastcgi;
  uwsgi_temp_path ${d}/tmp/uwsgi;
  scgi_temp_path ${d}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  # HTTPS cannot use sendfile without kernel TLS (not in this kernel): nginx reads the file through
  # these buffers and encrypts them in user space.
  output_buffers 2 512k;
  keepalive_requests 100000;
  keepalive_timeout 120s;
  ssl_certificate ${d}/server.pem;
  ssl_certificate_key ${d}/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:ceiling:1m;
  # ListObjectsV2 of the model's prefix (the SDK sends prefix=model%2F) gets the model's listing.
  map $arg_prefix $ceiling_listing {
    default /.listing/empty.xml;
    "~^${prefix}(%2F|/)$" /.listing/model.xml;
  }
  server {
    listen 127.0.0.1:${ports.http};
    listen 127.0.0.1:${ports.https} ssl;
    root ${o.root};
    error_page 403 /.errors/403.xml;
    error_page 404 /.errors/404.xml;
    error_page 412 /.errors/412.xml;
    error_page 416 /.errors/416.xml;
    error_page 501 /.errors/501.xml;
    location ~ ^/${bucket}/?$ {
      if ($args ~ "(^|&)list-type=2(&|$)") {
        rewrite ^ $ceiling_listing last;
      }
      return 501;
    }
    location /${bucket}/ {
      if ($args ~ "(^|&)attributes(=|&|$)") {
        return 501;
      }
      # Files only: a "directory" key is a 404, as in S3, never nginx's 301 to a slash.
      try_files $uri =404;
    }
    location ^~ /.listing/ {
      internal;
      default_type application/xml;
    }
    location ^~ /.errors/ {
      internal;
      default_type application/xml;
    }
    location / {
      return 404;
    }
  }
}
`;
}

/** A throwaway CA (EC P-256) and a server certificate for 127.0.0.1 and localhost. Returns the CA's path. */
function makeCertificates(dir: string): string {
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  ssl(
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=coldstart ceiling bench CA",
  );
  ssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1");
  writeFileSync(
    join(dir, "server.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n" +
      "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" +
      "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
  );
  ssl(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-set_serial",
    `0x${randomBytes(8).toString("hex")}`,
    "-days",
    "2",
    "-extfile",
    "server.ext",
    "-out",
    "server.pem",
  );
  return join(dir, "ca.pem");
}

function nginxVersion(): string {
  // nginx -V prints to stderr.
  const out = spawnSync("nginx", ["-V"], { encoding: "utf8" }).stderr ?? "";
  const nginx = /nginx version: (\S+)/.exec(out)?.[1] ?? "nginx ?";
  const ssl = /built with (OpenSSL \S+)/.exec(out)?.[1];
  return ssl ? `${nginx} (${ssl})` : nginx;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`nginx exited (${child.exitCode ?? child.signalCode}): ${stderr().trim()}`);
    const ok = await new Promise<boolean>((done) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        done(true);
      });
      s.once("error", () => done(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx did not listen on 127.0.0.1:${port} in 15 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM, then wait (synchronously: this runs in signal handlers) until it has exited; SIGKILL after 10 s. */
export function stopProcess(child: ChildProcess): void {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const gone = () => {
    try {
      // A child that exited stays a zombie until Node reaps it, which it cannot do while this runs.
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
    } catch {
      return true;
    }
  };
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const wait = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 200 && !gone(); i++) Atomics.wait(wait, 0, 0, 50);
  if (!gone()) {
    process.kill(pid, "SIGKILL");
    for (let i = 0; i < 100 && !gone(); i++) Atomics.wait(wait, 0, 0, 50);
  }
}

/**
 * Checks, with the AWS SDK v3 as coldstart uses it (path-style), that the origin answers what the
 * contenders need: the listing matches the files and nginx's own HEAD, a ranged GET with If-Match
 * returns those bytes, a stale If-Match gets 412, GetObjectAttributes degrades to 501, a missing key
 * is 404. Returns a line per check, and the request line nginx logged for the SDK's listing.
 */
export async function checkOrigin(
  origin: Origin,
  o: OriginOptions,
  protocol: Protocol,
): Promise<{ ok: boolean; report: string[] }> {
  const client = new S3Client({
    region: "us-east-1",
    endpoint: origin.endpoints[protocol],
    forcePathStyle: true,
    credentials: { accessKeyId: "ceiling", secretAccessKey: "ceiling" },
    maxAttempts: 1,
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: new NodeHttpHandler({
      httpsAgent: new HttpsAgent({ ca: readFileSync(origin.caFile) }),
    }),
  });
  const report: string[] = [];
  let ok = true;
  const check = (what: string, passed: boolean, detail: string) => {
    ok &&= passed;
    report.push(`${protocol}: ${what}: ${passed ? "ok" : "FAILED"} (${detail})`);
  };
  const status = async (send: () => Promise<{ $metadata: { httpStatusCode?: number } }>) => {
    try {
      return { status: (await send()).$metadata.httpStatusCode, name: "" };
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      return { status: e.$metadata?.httpStatusCode, name: e.name ?? "" };
    }
  };
  try {
    const listed = await client.send(new ListObjectsV2Command({ Bucket: o.bucket, Prefix: o.prefix }));
    const contents = listed.Contents ?? [];
    const sizesOk =
      contents.length === o.files.length &&
      o.files.every((f) => contents.some((c) => c.Key === o.prefix + f.relPath && c.Size === f.size));
    check("ListObjectsV2 lists every file with its size", sizesOk, `${contents.length} keys`);
    const log = readFileSync(origin.accessLog, "utf8").trim().split("\n");
    const line = log.findLast((l) => l.includes("list-type=2"));
    check("nginx logged the SDK's listing as 200", line?.startsWith("200 GET") ?? false, line ?? "no line");

    let etagsOk = true;
    for (const c of contents) {
      const head = await client.send(new HeadObjectCommand({ Bucket: o.bucket, Key: c.Key }));
      etagsOk &&= head.ETag === c.ETag && head.ContentLength === c.Size;
    }
    check("HEAD's ETag and size equal the listing's", etagsOk, `e.g. ${contents[0]?.ETag}`);

    const first = contents.find((c) => c.Key?.endsWith(".safetensors"));
    const f = o.files.find((x) => o.prefix + x.relPath === first?.Key);
    if (!first?.Key || !f) throw new Error("no .safetensors shard listed");
    const [start, end] = [1 << 20, (1 << 20) + 4095];
    const got = await client.send(
      new GetObjectCommand({
        Bucket: o.bucket,
        Key: first.Key,
        Range: `bytes=${start}-${end}`,
        IfMatch: first.ETag,
      }),
    );
    const body = Buffer.from((await got.Body?.transformToByteArray()) ?? []);
    const expected = Buffer.alloc(end - start + 1);
    const fh = await open(join(o.root, o.bucket, first.Key));
    await fh.read(expected, 0, expected.length, start);
    await fh.close();
    check(
      "ranged GET with If-Match: 206, Content-Range, the file's bytes",
      got.$metadata.httpStatusCode === 206 &&
        got.ContentRange === `bytes ${start}-${end}/${f.size}` &&
        body.equals(expected),
      `${got.$metadata.httpStatusCode} ${got.ContentRange}`,
    );
    const attrs = await status(() =>
      client.send(
        new GetObjectAttributesCommand({
          Bucket: o.bucket,
          Key: first.Key,
          ObjectAttributes: ["ObjectParts"],
        }),
      ),
    );
    check(
      "GetObjectAttributes degrades to 501 NotImplemented",
      attrs.status === 501,
      `${attrs.status} ${attrs.name}`,
    );
    const missing = await status(() =>
      client.send(new HeadObjectCommand({ Bucket: o.bucket, Key: `${o.prefix}no-such-key` })),
    );
    check("HEAD of a missing key: 404", missing.status === 404, `${missing.status} ${missing.name}`);
    // Last: nginx closes the connection after a 412 while answering keep-alive (S3 keeps it).
    const stale = await status(() =>
      client.send(
        new GetObjectCommand({ Bucket: o.bucket, Key: first.Key, Range: "bytes=0-15", IfMatch: '"0-0"' }),
      ),
    );
    check("ranged GET with a stale If-Match: 412", stale.status === 412, `${stale.status} ${stale.name}`);
  } catch (err) {
    check("the SDK's requests", false, (err as Error).message);
  } finally {
    client.destroy();
  }
  return { ok, report };
}

const xml = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c] as string,
  );
