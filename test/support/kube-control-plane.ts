/**
 * A real Kubernetes control plane for the tests, envtest-style: etcd and kube-apiserver as child
 * processes, both built pinned from Go modules by scripts/go-tools.mjs (test/tools/etcd,
 * test/tools/kube-apiserver). No controller manager, scheduler or kubelet: objects are stored,
 * validated, admitted (RBAC, ValidatingAdmissionPolicy, service account tokens) and watched, but a Pod
 * never runs and nothing garbage-collects.
 *
 * Everything lives in one temporary directory: etcd's data (no fsync), the certificates made with the
 * `openssl` CLI (a CA, a serving certificate for 127.0.0.1 and localhost, the service account signing
 * key), the static token file (one admin token in system:masters), the admin kubeconfig and both
 * processes' logs. stop() ends both processes (SIGTERM, then SIGKILL) and removes the directory.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, type TestContext } from "vitest";
import { goTool, requireGoTool } from "./go-tools.js";
import { freePort } from "./processes.js";
import { waitFor } from "./wait.js";

const run = promisify(execFile);

/** The issuer of service account tokens, as in a real cluster. */
export const SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc";

export interface KubeControlPlaneOptions {
  /** The etcd binary (goTool("etcd")). */
  etcd: string;
  /** The kube-apiserver binary (goTool("kube-apiserver")). */
  kubeApiServer: string;
  /**
   * How long each may take to become ready before the start fails (default 180 s: it only bounds a
   * failure; the API server's post-start hooks take several seconds on an idle 2-core machine).
   */
  readyTimeoutMs?: number;
  /** More kube-apiserver flags (`--feature-gates=...`); a flag given twice takes the last value. */
  apiServerArgs?: string[];
}

export interface KubeControlPlane {
  /** https://127.0.0.1:PORT of the API server. */
  url: string;
  /** The CA that signed the serving certificate (PEM file). */
  caFile: string;
  /** A bearer token of user `admin` in group `system:masters`. */
  adminToken: string;
  /** A kubeconfig file for the admin. */
  kubeconfig: string;
  /** http://127.0.0.1:PORT of etcd (for a test that compacts or breaks watches underneath). */
  etcdUrl: string;
  /** The temporary directory that holds everything; removed by stop(). */
  dir: string;
  /** The last lines both processes logged, for a failure message. */
  logs(): string;
  /** Ends both processes (SIGTERM, then SIGKILL after a grace period) and removes `dir`. Idempotent. */
  stop(): Promise<void>;
}

/** Writes a kubeconfig (JSON, which is YAML) that reaches `url` with `token`, trusting `caFile`. */
export async function writeKubeconfig(
  path: string,
  { url, caFile, token, user = "user" }: { url: string; caFile: string; token: string; user?: string },
): Promise<void> {
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "test", cluster: { server: url, "certificate-authority": caFile } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: user, context: { cluster: "test", user } }],
    "current-context": user,
  };
  await writeFile(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
}

/** A child process whose output goes to a log file, so that nothing blocks on a full pipe. */
class LoggedProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  exit: string | undefined;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    readonly logFile: string,
  ) {
    const fd = openSync(logFile, "a");
    try {
      this.child = spawn(command, args, { stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exit = `${code ?? signal}`;
        resolve();
      });
      this.child.once("error", (err) => {
        this.exit = err.message;
        resolve();
      });
    });
  }

  tail(lines = 40): string {
    let text = "";
    try {
      text = readFileSync(this.logFile, "utf8");
    } catch {
      return `${this.name}: no log`;
    }
    return `--- ${this.name} (last ${lines} lines) ---\n${text.trimEnd().split("\n").slice(-lines).join("\n")}`;
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    if (this.exit !== undefined) return;
    this.child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), graceMs);
    });
    const late = await Promise.race([this.exited.then(() => false), graceOver]);
    clearTimeout(timer);
    if (late) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** GET `url`; resolves with the status and body, rejects on a transport error or after 5 s. */
function get(url: string, options: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  const transport = url.startsWith("https:") ? https : http;
  return new Promise((resolve, reject) => {
    const req = transport.get(url, { ...options, timeout: 5_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on("error", reject);
  });
}

/**
 * Polls `probe` (test/support/wait.ts's waitFor) until it answers true; fails at once when one of
 * `processes` exits, and after `timeoutMs` (it bounds a failure only) with the last answer and the logs.
 */
async function until(
  what: string,
  probe: () => Promise<string | true>,
  processes: LoggedProcess[],
  timeoutMs: number,
): Promise<void> {
  const logs = () => processes.map((p) => p.tail()).join("\n");
  let last = "no answer yet";
  let exited: string | undefined;
  try {
    await waitFor(
      async () => {
        const dead = processes.find((p) => p.exit !== undefined);
        if (dead) {
          exited = `${dead.name} exited (${dead.exit}) while waiting for ${what}`;
          throw new Error(exited);
        }
        const answer = await probe().catch((err: Error) => err.message);
        if (answer === true) return true;
        last = answer;
        return false;
      },
      { timeoutMs, intervalMs: 100, what },
    );
  } catch {
    throw new Error(`${exited ?? `${what} not reached in time; last: ${last}`}\n${logs()}`);
  }
}

/** The openssl config: the CA's and the serving certificate's extensions. */
const OPENSSL_CONFIG = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = coldstart-test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

/** A CA, a serving certificate it signed for 127.0.0.1 and localhost, and an RSA service account key. */
async function makeCertificates(dir: string): Promise<Record<"ca" | "cert" | "key" | "saKey", string>> {
  const f = (name: string) => join(dir, name);
  await writeFile(f("openssl.cnf"), OPENSSL_CONFIG);
  // Whitespace-separated arguments: no value here contains a space.
  const openssl = (args: string) => run("openssl", args.split(/\s+/).filter(Boolean), { cwd: dir });
  await Promise.all([
    openssl(`req -x509 -config openssl.cnf -extensions ca -newkey rsa:2048 -nodes
      -keyout ca.key -out ca.crt -days 7 -subj /CN=coldstart-test-ca`),
    openssl(`req -new -config openssl.cnf -newkey rsa:2048 -nodes
      -keyout server.key -out server.csr -subj /CN=kube-apiserver`),
    openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key"),
  ]);
  await openssl(`x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 7
    -extfile openssl.cnf -extensions server -out server.crt`);
  return { ca: f("ca.crt"), cert: f("server.crt"), key: f("server.key"), saKey: f("sa.key") };
}

/**
 * Starts etcd, then kube-apiserver against it, and resolves once the API server's /readyz answers ok
 * to the admin token. On failure both are stopped, the directory removed, and the error carries the
 * logs' last lines.
 */
export async function startKubeControlPlane(options: KubeControlPlaneOptions): Promise<KubeControlPlane> {
  const readyTimeoutMs = options.readyTimeoutMs ?? 180_000;
  const dir = await mkdtemp(join(tmpdir(), "kube-cp-"));
  const processes: LoggedProcess[] = [];
  let stopped: Promise<void> | undefined;
  const killNow = () => {
    for (const p of processes) if (p.exit === undefined) p.child.kill("SIGKILL");
  };
  // A test runner that exits without stop() (a crash, process.exit) leaves no server behind.
  process.once("exit", killNow);
  const stop = () => {
    stopped ??= (async () => {
      // The API server first: etcd going away under it only makes it log and retry.
      for (const p of [...processes].reverse()) await p.stop(10_000);
      process.off("exit", killNow);
      await rm(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  try {
    const [certs, etcdPort, peerPort, securePort] = await Promise.all([
      makeCertificates(dir),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const etcdUrl = `http://127.0.0.1:${etcdPort}`;
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    await mkdir(join(dir, "etcd"), { mode: 0o700 });
    const etcd = new LoggedProcess(
      "etcd",
      options.etcd,
      [
        "--name=test",
        `--data-dir=${join(dir, "etcd")}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=test=${peerUrl}`,
        // A throwaway store: losing it in a crash costs nothing, and fsync is most of etcd's latency.
        "--unsafe-no-fsync",
        "--log-level=warn",
      ],
      join(dir, "etcd.log"),
    );
    processes.push(etcd);
    await until(
      `etcd health at ${etcdUrl}`,
      async () => {
        const r = await get(`${etcdUrl}/health`);
        return r.status === 200 && /"health":\s*"true"/.test(r.body) ? true : `${r.status} ${r.body}`;
      },
      processes,
      readyTimeoutMs,
    );

    const adminToken = randomBytes(24).toString("hex");
    const tokenFile = join(dir, "tokens.csv");
    await writeFile(tokenFile, `${adminToken},admin,admin,"system:masters"\n`, { mode: 0o600 });
    const url = `https://127.0.0.1:${securePort}`;
    const apiServer = new LoggedProcess(
      "kube-apiserver",
      options.kubeApiServer,
      [
        `--etcd-servers=${etcdUrl}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${securePort}`,
        `--tls-cert-file=${certs.cert}`,
        `--tls-private-key-file=${certs.key}`,
        `--token-auth-file=${tokenFile}`,
        "--authorization-mode=RBAC",
        `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
        `--service-account-key-file=${certs.saKey}`,
        `--service-account-signing-key-file=${certs.saKey}`,
        `--api-audiences=${SERVICE_ACCOUNT_ISSUER}`,
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        // The advertised address is loopback, which the kubernetes Service's endpoints may not hold
        // (upstream's own test server turns the reconciler off for the same reason).
        "--endpoint-reconciler-type=none",
        // One client at a time: API priority and fairness only adds post-start work.
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        ...(options.apiServerArgs ?? []),
      ],
      join(dir, "kube-apiserver.log"),
    );
    processes.push(apiServer);
    const ca = readFileSync(certs.ca);
    await until(
      `kube-apiserver /readyz at ${url}`,
      async () => {
        const r = await get(`${url}/readyz`, { ca, headers: { Authorization: `Bearer ${adminToken}` } });
        return r.status === 200 ? true : `${r.status} ${r.body.slice(-600)}`;
      },
      processes,
      readyTimeoutMs,
    );

    const kubeconfig = join(dir, "admin.kubeconfig");
    await writeKubeconfig(kubeconfig, { url, caFile: certs.ca, token: adminToken, user: "admin" });
    return {
      url,
      caFile: certs.ca,
      adminToken,
      kubeconfig,
      etcdUrl,
      dir,
      logs: () => processes.map((p) => p.tail()).join("\n"),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** An API server's answer: the status, and the JSON body (or `{ text }` when it is not JSON). */
export interface KubeReply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: API objects and Status replies, read freely
  body: Record<string, any>;
}

/** One request with one bearer token: JSON in (or YAML, which JSON is, for an apply) and out. */
export type KubeClient = (
  method: string,
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<KubeReply>;

/**
 * Raw requests to the control plane as `token` (default: the admin), trusting its CA. For what
 * client-node's typed models would lose (its serializer drops "x-kubernetes-*" keys of a CRD) or
 * cannot say (a server-side apply with a field manager, a dry run, a Table).
 */
export function kubeClient(p: KubeControlPlane, token: string = p.adminToken): KubeClient {
  const ca = readFileSync(p.caFile);
  return (method, path, body, headers = {}) =>
    new Promise((done, fail) => {
      const req = https.request(
        new URL(path, p.url),
        {
          method,
          ca,
          headers: {
            authorization: `Bearer ${token}`,
            accept: "application/json",
            ...(body === undefined ? {} : { "content-type": "application/json" }),
            ...headers,
          },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c) => (text += c));
          res.on("end", () => {
            let parsed: Record<string, unknown> = {};
            try {
              parsed = text ? JSON.parse(text) : {};
            } catch {
              parsed = { text }; // "404 page not found" before a CRD is served
            }
            done({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on("error", fail);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
}

/**
 * startKubeControlPlane with the pinned binaries, when scripts/go-tools.mjs has built them; undefined
 * when not (each test then asks useControlPlane's plane(), which skips, or fails under CI).
 */
export async function startBuiltControlPlane(
  options: Omit<KubeControlPlaneOptions, "etcd" | "kubeApiServer"> = {},
): Promise<KubeControlPlane | undefined> {
  const etcd = goTool("etcd");
  const kubeApiServer = goTool("kube-apiserver");
  if (!etcd || !kubeApiServer) return undefined;
  return startKubeControlPlane({ ...options, etcd, kubeApiServer });
}

/** A test file's control plane, from useControlPlane. */
export interface UsedControlPlane {
  /**
   * The running control plane for one test: skips (fails under CI) when the binaries are not built.
   * A failing test prints the last lines of etcd's and kube-apiserver's logs, then `more`'s.
   */
  plane(ctx: TestContext, more?: () => Promise<string> | string): KubeControlPlane;
  /** The control plane outside a test (a later beforeAll, an afterEach); undefined when not started. */
  current(): KubeControlPlane | undefined;
}

/**
 * One control plane for the calling test file: started (startBuiltControlPlane with `options`) in a
 * beforeAll, stopped in an afterAll. Call it before registering hooks that use the plane: beforeAll
 * hooks run in registration order, afterAll hooks in reverse, so the plane outlives their cleanup.
 */
export function useControlPlane(
  options: Omit<KubeControlPlaneOptions, "etcd" | "kubeApiServer"> = {},
): UsedControlPlane {
  let cp: KubeControlPlane | undefined;
  beforeAll(async () => {
    // Missing binaries: each test calls plane(), which skips or (under CI) fails.
    cp = await startBuiltControlPlane(options);
  }, 240_000);
  afterAll(async () => {
    await cp?.stop();
  });
  return {
    plane: (ctx, more) => {
      requireGoTool("etcd", ctx.skip);
      requireGoTool("kube-apiserver", ctx.skip);
      const running = cp;
      if (!running) throw new Error("the control plane did not start (see beforeAll's error)");
      ctx.onTestFailed(async () => {
        process.stderr.write(`${running.logs()}\n${more ? await more() : ""}`);
      });
      return running;
    },
    current: () => cp,
  };
}
