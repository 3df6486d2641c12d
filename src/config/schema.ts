import bytes from "bytes-iec";
import ms from "ms";
import { z } from "zod";

/**
 * The one config schema. Each option lists, side by side, its type (a zod schema that also coerces
 * strings from env and flags), default, unit (in the name), environment variables (first set wins),
 * CLI flag and help. docs/config.md documents every option; a test keeps the two in step.
 */
export interface OptionSpec<S extends z.ZodType = z.ZodType> {
  /** Validates and coerces a raw value (string from env/flag, or a typed default). */
  schema: S;
  /** Used when no flag or env var sets the option. */
  default: z.input<S> | undefined;
  /** Environment variables, highest precedence first. */
  env: readonly string[];
  /** Commander flag spec, e.g. "--part-size <size>". Absent: not settable from the command line. */
  flag?: string;
  /** Repeatable flag (collects into an array). */
  repeatable?: boolean;
  help: string;
}

function option<S extends z.ZodType>(spec: OptionSpec<S>): OptionSpec<S> {
  return spec;
}

// A refusal reads "<option> (from <source>) must …, got <value>" (src/config/load.ts adds the
// frame): a message here says what the value must be, never the value itself.

/** A byte size: a whole number of bytes or a string with a unit (`8MiB`, `16 MiB`, `8MB` = 8,000,000). */
const byteSize = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const n = typeof v === "number" ? v : bytes.parse(v.trim());
  if (n === null || !Number.isSafeInteger(n)) {
    ctx.addIssue({ code: "custom", message: "must be a byte size like 8MiB or 8388608" });
    return z.NEVER;
  }
  return n;
});

/** A byte size from `min` to `max`, the bounds said in bytes and with a unit. */
const byteSizeIn = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  byteSize.pipe(
    z
      .number()
      .min(min, `must be at least ${min}${min > 0 ? ` (${bytes.format(min, { mode: "binary" })})` : ""}`)
      .max(max, `must be at most ${max} (${bytes.format(max, { mode: "binary" })})`),
  );

/** A duration: milliseconds, or a string with a unit (`15m`, `30s`, `1h`). */
const duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const n = typeof v === "number" ? v : parseDuration(v.trim());
  if (n === undefined || !Number.isSafeInteger(n) || n < 0) {
    ctx.addIssue({ code: "custom", message: "must be a duration like 15m, 30s or 1500 (ms)" });
    return z.NEVER;
  }
  return n;
});

function parseDuration(s: string): number | undefined {
  if (/^\d+$/.test(s)) return Number(s);
  // ms throws rather than answer undefined for an empty string or one over 100 characters.
  if (s === "" || s.length > 100) return undefined;
  return ms(s as ms.StringValue);
}

/** A duration from `min` to `max` milliseconds, the bounds said with a unit. */
const durationIn = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  duration.pipe(
    z
      .number()
      .min(min, `must be at least ${ms(min)}`)
      .max(max, `must be at most ${ms(max)}`),
  );

/** host:port for a TCP listener. */
const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, "must be host:port, e.g. 127.0.0.1:8476");

const boolish = z
  .union([z.boolean(), z.enum(["true", "false", "1", "0", "yes", "no"])], {
    error: "must be true or false (or 1, 0, yes, no)",
  })
  .transform((v) => (typeof v === "boolean" ? v : v === "true" || v === "1" || v === "yes"));

/** A whole number from `min` to `max`, from a number or its decimal string. */
const int = (min: number, max: number) =>
  z.preprocess(
    // Number("") is 0, but an empty value is no number rather than a zero.
    (v) => (typeof v === "string" && v.trim() === "" ? Number.NaN : v),
    z.coerce
      .number({ error: "must be a whole number" })
      .int("must be a whole number")
      .min(min, `must be at least ${min}`)
      .max(max, `must be at most ${max}`),
  );

/** An http:// or https:// URL. */
const httpUrl = z.url({ protocol: /^https?$/, error: "must be an http:// or https:// URL" });

const absolutePath = z.string().min(1, "must not be empty").startsWith("/", "must be an absolute path");

/** Comma-separated list from env, array from repeatable flags. */
const stringList = z
  .union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(",")).map((s) => s.trim()).filter((s) => s.length > 0));

const MiB = 1024 * 1024;

/** Where the staging root can live (src/node/placement.ts decides which). */
export const PLACEMENTS = [
  "nvme-instance-store",
  "nvme-ebs",
  "nvme-local",
  "non-nvme",
  "root-volume",
  "network",
  "tmpfs",
  "unknown",
] as const;

export const schema = {
  s3: {
    endpoint: option({
      schema: httpUrl.optional(),
      default: undefined,
      env: ["COLDSTART_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
      flag: "--endpoint <url>",
      help: "S3 endpoint URL for S3-compatible stores; unset means AWS S3 for the region.",
    }),
    region: option({
      schema: z.string().regex(/^[a-z0-9-]{1,64}$/, "must be a region name like us-east-1"),
      default: "us-east-1",
      env: ["COLDSTART_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
      flag: "--region <region>",
      help: "S3 region used for signing.",
    }),
    pathStyle: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_S3_PATH_STYLE"],
      flag: "--path-style",
      help: "Address buckets as https://endpoint/BUCKET/KEY instead of https://BUCKET.endpoint/KEY.",
    }),
  },
  download: {
    concurrency: option({
      schema: int(1, 1024),
      default: 32,
      env: ["COLDSTART_CONCURRENCY"],
      flag: "--concurrency <n>",
      help: "Ranged GETs in flight at once, across all files of a job (also the HTTP agent's socket count).",
    }),
    workers: option({
      schema: z.union([z.literal("auto"), int(0, 256)], {
        error: "must be auto or a whole number from 0 to 256",
      }),
      default: "auto",
      env: ["COLDSTART_WORKERS"],
      flag: "--workers <n>",
      help: "Threads that receive, hash and write parts, each with its own connections, so the byte path scales with cores and never holds the event loop that answers the API. auto: the cores the process may use (its cgroup CPU quota included), at most 16. 0: every part on the main thread (for debugging).",
    }),
    partSizeBytes: option({
      schema: byteSizeIn(MiB, 5 * 1024 * MiB),
      default: 8 * MiB,
      env: ["COLDSTART_PART_SIZE"],
      flag: "--part-size <size>",
      help: "Bytes per ranged GET (accepts units: 8MiB, 16MiB). Multipart objects use their own part boundaries.",
    }),
    include: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_INCLUDE"],
      flag: "--include <glob>",
      repeatable: true,
      help: "Stage only keys (relative to the prefix) matching one of these globs. Repeatable.",
    }),
    exclude: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_EXCLUDE"],
      flag: "--exclude <glob>",
      repeatable: true,
      help: "Skip keys (relative to the prefix) matching any of these globs; wins over --include. Repeatable.",
    }),
    maxBytesPerSecond: option({
      schema: byteSizeIn(0),
      default: 0,
      env: ["COLDSTART_MAX_BYTES_PER_SECOND"],
      flag: "--max-bytes-per-second <size>",
      help: "Cap on download throughput across every job (0: none), e.g. 500MiB to leave a NIC's headroom to the inference traffic.",
    }),
    requestTimeoutMs: option({
      schema: int(100, 600_000),
      default: 20_000,
      env: ["COLDSTART_REQUEST_TIMEOUT_MS"],
      flag: "--request-timeout-ms <ms>",
      help: "Inactivity timeout per request: no response or no body bytes for this long counts as a stall and is retried.",
    }),
    lowSpeedBytesPerSecond: option({
      schema: byteSizeIn(0),
      default: 16 * 1024,
      env: ["COLDSTART_LOW_SPEED_LIMIT"],
      flag: "--low-speed-limit <size>",
      help: "Per request: a body that arrives slower than this, over download.lowSpeedTimeMs of reading, is abandoned and resumed on a new connection (retry reason low_speed; it counts against download.maxAttempts however many bytes it brought). It is a floor for a stuck connection, not for a slow link: a job's requests share the link, so keep it below link speed / download.concurrency (16KiB x 32 = 4 Mbit/s). 0: off. Like curl's --speed-limit.",
    }),
    lowSpeedTimeMs: option({
      schema: durationIn(1000, 3_600_000),
      default: 30_000,
      env: ["COLDSTART_LOW_SPEED_TIME"],
      flag: "--low-speed-time <duration>",
      help: "The window download.lowSpeedBytesPerSecond is averaged over (time spent waiting for the rate cap or the disk does not count). Like curl's --speed-time.",
    }),
    maxAttempts: option({
      schema: int(1, 100),
      default: 10,
      env: ["COLDSTART_MAX_ATTEMPTS"],
      flag: "--max-attempts <n>",
      help: "Attempts per request (first try included) before the file fails with CS_RETRIES_EXHAUSTED.",
    }),
    retryBaseDelayMs: option({
      schema: int(1, 60_000),
      default: 100,
      env: ["COLDSTART_RETRY_BASE_DELAY_MS"],
      flag: "--retry-base-delay-ms <ms>",
      help: "Base of the exponential backoff (full jitter) between attempts.",
    }),
    retryMaxDelayMs: option({
      schema: int(1, 600_000),
      default: 20_000,
      env: ["COLDSTART_RETRY_MAX_DELAY_MS"],
      flag: "--retry-max-delay-ms <ms>",
      help: "Cap of the backoff between attempts.",
    }),
  },
  daemon: {
    root: option({
      schema: absolutePath,
      default: "/var/lib/coldstart",
      env: ["COLDSTART_ROOT"],
      flag: "--root <dir>",
      help: "Staging root on the node's NVMe; models live at <root>/models/<id>/ (the same path on every node).",
    }),
    listen: option({
      schema: hostPort,
      default: "127.0.0.1:8476",
      env: ["COLDSTART_LISTEN"],
      flag: "--listen <host:port>",
      help: "TCP listener of the HTTP API. Every /v1 call on it needs a bearer token (unless daemon.auth is none).",
    }),
    metricsListen: option({
      schema: hostPort,
      default: "127.0.0.1:9476",
      env: ["COLDSTART_METRICS_LISTEN"],
      flag: "--metrics-listen <host:port>",
      help: "Separate listener serving only /metrics, /livez and /readyz (no auth; nothing to mutate).",
    }),
    socketPath: option({
      schema: absolutePath,
      default: "/run/coldstart/coldstart.sock",
      env: ["COLDSTART_SOCKET"],
      flag: "--socket <path>",
      help: "Unix socket for the node-local init-container handshake (mode 0660, directory created if missing).",
    }),
    auth: option({
      schema: z.enum(["token", "none"]),
      default: "token",
      env: ["COLDSTART_AUTH"],
      flag: "--auth <mode>",
      help: "token: /v1 calls on TCP need `Authorization: Bearer <token>`; none: local demos only, refused on a non-loopback listener.",
    }),
    tokenFile: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_TOKEN_FILE"],
      flag: "--token-file <path>",
      help: "File of accepted API tokens, one per line (a mounted Secret); reloaded when it changes. They reach every route, the peer routes and the mirror included; the first is what peers and containerd are given unless peers.tokenFile or mirror.tokenFile is set.",
    }),
    bodyLimitBytes: option({
      schema: byteSizeIn(1024, MiB),
      default: 64 * 1024,
      env: ["COLDSTART_BODY_LIMIT"],
      flag: "--body-limit <size>",
      help: "Largest accepted request body; larger ones are refused with 413.",
    }),
    shutdownGraceMs: option({
      schema: duration,
      default: 25_000,
      env: ["COLDSTART_SHUTDOWN_GRACE"],
      flag: "--shutdown-grace <duration>",
      help: "On SIGTERM, how long in-flight parts may run to completion before the daemon aborts them (journals keep the rest).",
    }),
    onRefusal: option({
      schema: z.enum(["exit", "serve"]),
      default: "exit",
      env: ["COLDSTART_ON_REFUSAL"],
      flag: "--on-refusal <mode>",
      help: "When the node breaks gds.mode on or placement.require: exit (code 1), or serve: stay up not ready, staging nothing, with the reason on /readyz, in coldstart_policy_refused and in every API answer (503), and start once a re-probe finds the node fixed.",
    }),
  },
  sources: {
    allow: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_SOURCES_ALLOW"],
      flag: "--allow-source <pattern>",
      repeatable: true,
      help: "Sources the daemon may fetch from, as globs on s3://bucket/prefix/ (e.g. s3://models/meta-llama/**). Empty: nothing is allowed.",
    }),
  },
  eviction: {
    maxBytes: option({
      schema: byteSizeIn(0),
      default: 0,
      env: ["COLDSTART_EVICTION_MAX_BYTES"],
      flag: "--max-bytes <size>",
      help: "Byte budget for staged models (0: no budget, watermarks only).",
    }),
    highWatermarkPercent: option({
      schema: int(1, 100),
      default: 90,
      env: ["COLDSTART_EVICTION_HIGH_WATERMARK"],
      flag: "--high-watermark <percent>",
      help: "Disk use of the staging filesystem above which least recently used models are evicted.",
    }),
    lowWatermarkPercent: option({
      schema: int(0, 100),
      default: 80,
      env: ["COLDSTART_EVICTION_LOW_WATERMARK"],
      flag: "--low-watermark <percent>",
      help: "Eviction stops once disk use is back under this percentage.",
    }),
    inUseGraceMs: option({
      schema: duration,
      default: 10 * 60_000,
      env: ["COLDSTART_IN_USE_GRACE"],
      flag: "--in-use-grace <duration>",
      help: "A model handed to a pod (coldstart wait) is not evicted for this long afterwards.",
    }),
  },
  peers: {
    urls: option({
      schema: stringList.pipe(z.array(httpUrl)),
      default: [],
      env: ["COLDSTART_PEERS"],
      flag: "--peer <url>",
      repeatable: true,
      help: "Other nodes' daemon APIs (http://HOST:8476) to ask for verified pieces of a model before S3. Repeatable; empty: S3 only.",
    }),
    dns: option({
      schema: hostPort.optional(),
      default: undefined,
      env: ["COLDSTART_PEER_DNS"],
      flag: "--peer-dns <host:port>",
      help: "A name whose addresses are peers, re-resolved every 30 s: the DaemonSet's headless Service, e.g. coldstart-peers.coldstart.svc.cluster.local:8476.",
    }),
    selfAddress: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_PEER_SELF", "POD_IP"],
      flag: "--peer-self <address>",
      help: "This daemon's own address among the resolved ones (status.podIP), so it never asks itself.",
    }),
    timeoutMs: option({
      schema: durationIn(100, 60_000),
      default: 2_000,
      env: ["COLDSTART_PEER_TIMEOUT"],
      flag: "--peer-timeout <duration>",
      help: "How long a peer may take to say whether it holds an object; a dead peer costs at most this, then S3.",
    }),
    cohortWaitMs: option({
      schema: durationIn(0, 600_000),
      default: 30_000,
      env: ["COLDSTART_PEER_COHORT_WAIT"],
      flag: "--peer-cohort-wait <duration>",
      help: "In a ModelCache's first wave, how long a part another node of the wave reads from S3 is waited for before this node reads it from S3 itself (0: never wait).",
    }),
    maxInFlight: option({
      schema: int(1, 256),
      default: 16,
      env: ["COLDSTART_PEER_MAX_IN_FLIGHT"],
      flag: "--peer-max-in-flight <n>",
      help: "Pieces fetched from peers at once; each is held in memory until verified (16 x 8 MiB parts: 128 MiB). More parts wait for a slot.",
    }),
    maxInFlightPerPeer: option({
      schema: int(1, 256),
      default: 8,
      env: ["COLDSTART_PEER_MAX_IN_FLIGHT_PER_PEER"],
      flag: "--peer-max-in-flight-per-peer <n>",
      help: "Pieces asked of any one peer at once; each piece goes to the least busy peer that holds it, so load spreads over every holder.",
    }),
    maxUploadBytesPerSecond: option({
      schema: byteSizeIn(0),
      default: 0,
      env: ["COLDSTART_PEER_MAX_UPLOAD_BYTES_PER_SECOND"],
      flag: "--peer-max-upload-bytes-per-second <size>",
      help: "Cap on the bytes this node serves to peers (0: none), so serving never starves the node's own inference traffic.",
    }),
    tokenFile: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_PEER_TOKEN_FILE"],
      flag: "--peer-token-file <path>",
      help: "File of peer tokens, one per line (a mounted Secret); reloaded when it changes. Its first token is what this daemon presents to peers, and its tokens reach the peer routes (/v1/peer/*) only, never the rest of the API. Unset: peers use the API token (daemon.tokenFile).",
    }),
  },
  mirror: {
    listen: option({
      schema: hostPort.optional(),
      default: undefined,
      env: ["COLDSTART_MIRROR_LISTEN"],
      flag: "--mirror-listen <host:port>",
      help: 'Serve containerd a pull-through OCI mirror here (unset: no mirror). Point hosts.toml at it with capabilities ["pull"].',
    }),
    contentDir: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_MIRROR_CONTENT_DIR"],
      flag: "--mirror-content-dir <dir>",
      help: "containerd's content store (default <node.hostRoot>/var/lib/containerd/io.containerd.content.v1.content), read-only.",
    }),
    manageHostsToml: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_MIRROR_MANAGE_HOSTS_TOML"],
      flag: "--mirror-manage-hosts-toml",
      help: "Write each mirrored registry's hosts.toml (mirror first, the node's own file kept as a backup) while the daemon runs; restore it on stop. Needs certs.d writable.",
    }),
    hostAddress: option({
      schema: z.string().min(1),
      default: "127.0.0.1",
      env: ["COLDSTART_MIRROR_HOST", "HOST_IP"],
      flag: "--mirror-host <address>",
      help: "The address containerd reaches the mirror at (the node's IP, status.hostIP), for managed hosts.toml files.",
    }),
    registries: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_MIRROR_REGISTRIES"],
      flag: "--mirror-registry <host>",
      repeatable: true,
      help: "Registries mirrored (containerd's ?ns=, e.g. nvcr.io); requests for others are 404. Empty: any.",
    }),
    resolveTags: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_MIRROR_RESOLVE_TAGS"],
      flag: "--mirror-resolve-tags",
      help: 'Answer manifests by tag too, with what this node\'s containerd, else a peer\'s (the newest), last pulled, not the registry\'s word (never latest; for immutable tags); managed hosts.toml files then give the mirror ["pull", "resolve"]. Off: tags are a miss and containerd asks the registry.',
    }),
    containerdSocket: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_MIRROR_CONTAINERD_SOCKET"],
      flag: "--mirror-containerd-socket <path>",
      help: "containerd's gRPC socket (e.g. /host/run/containerd/containerd.sock): tags are looked up there, for this node's mirror and for peers' (GET /v1/peer/tag). Unset: this node knows no tags.",
    }),
    containerdNamespace: option({
      schema: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,75}$/, "must be a containerd namespace name, e.g. k8s.io"),
      default: "k8s.io",
      env: ["COLDSTART_MIRROR_CONTAINERD_NAMESPACE"],
      flag: "--mirror-containerd-namespace <name>",
      help: "The containerd namespace whose images are looked up: kubelet's is k8s.io.",
    }),
    tokenFile: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_MIRROR_TOKEN_FILE"],
      flag: "--mirror-token-file <path>",
      help: "File of mirror tokens, one per line (a mounted Secret); reloaded when it changes. Its first token is what containerd sends (managed hosts.toml), and its tokens reach the mirror only, never the API. Unset: the mirror takes the API token (daemon.tokenFile).",
    }),
  },
  compileCache: {
    remote: option({
      schema: z
        .string()
        .regex(/^s3:\/\/[A-Za-z0-9][A-Za-z0-9._-]{1,254}(\/\S*)?$/, "must be s3://BUCKET/PREFIX/")
        .optional(),
      default: undefined,
      env: ["COLDSTART_COMPILE_CACHE_REMOTE"],
      flag: "--compile-cache-remote <uri>",
      help: "Where compile caches are shared, e.g. s3://bucket/compile-cache/ (unset: restores miss and nothing is published).",
    }),
    allow: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_COMPILE_CACHE_ALLOW"],
      flag: "--compile-cache-allow <pattern>",
      repeatable: true,
      help: "Other remotes a pod may name (wait --compile-cache-remote), as globs on s3://bucket/prefix/. Empty: only compileCache.remote.",
    }),
    publish: option({
      schema: z.enum(["auto", "manual", "off"]),
      default: "auto",
      env: ["COLDSTART_COMPILE_CACHE_PUBLISH"],
      flag: "--compile-cache-publish <mode>",
      help: "auto: publish a keyed directory once it has new artifacts and has been quiet; manual: only on `coldstart cache publish`; off: this node only reads.",
    }),
    quietPeriodMs: option({
      schema: durationIn(1000),
      default: 2 * 60_000,
      env: ["COLDSTART_COMPILE_CACHE_QUIET"],
      flag: "--compile-cache-quiet <duration>",
      help: "How long a keyed directory must stay unchanged before an automatic publish (the engine has finished compiling).",
    }),
    scanIntervalMs: option({
      schema: durationIn(200),
      default: 30_000,
      env: ["COLDSTART_COMPILE_CACHE_SCAN_INTERVAL"],
      flag: "--compile-cache-scan-interval <duration>",
      help: "How often keyed directories are listed for new artifacts (publish, silent misses, sizes for eviction).",
    }),
    maxBytes: option({
      schema: byteSizeIn(MiB),
      default: 20 * 1024 * MiB,
      env: ["COLDSTART_COMPILE_CACHE_MAX_BYTES"],
      flag: "--compile-cache-max-bytes <size>",
      help: "Largest cache published or restored (unpacked bytes); a bigger one is refused, not truncated.",
    }),
    retentionMs: option({
      schema: durationIn(1000),
      default: 30 * 24 * 3_600_000,
      env: ["COLDSTART_COMPILE_CACHE_RETENTION"],
      flag: "--retention <duration>",
      help: "`coldstart cache prune` removes remote caches neither published nor hit for this long.",
    }),
    uploadGraceMs: option({
      schema: durationIn(1000),
      default: 6 * 3_600_000,
      env: ["COLDSTART_COMPILE_CACHE_UPLOAD_GRACE"],
      flag: "--upload-grace <duration>",
      help: "`coldstart cache prune` removes packs no manifest names and unfinished uploads only once they are this old (a publish may be in progress).",
    }),
  },
  kube: {
    nodeName: option({
      schema: z.string().min(1).max(253).optional(),
      default: undefined,
      env: ["COLDSTART_NODE_NAME", "NODE_NAME"],
      flag: "--node-name <name>",
      help: "This node's name (downward API). With in-cluster credentials, enables node labels for ready models.",
    }),
    labels: option({
      schema: z.enum(["auto", "on", "off"]),
      default: "auto",
      env: ["COLDSTART_NODE_LABELS"],
      flag: "--node-labels <mode>",
      help: "auto: label the node when a node name and Kubernetes credentials are present; on: refuse to start without them; off: never.",
    }),
    kubeconfig: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_KUBECONFIG"],
      flag: "--kubeconfig <path>",
      help: "Kubeconfig to use instead of the in-cluster service account (outside a cluster, for tests).",
    }),
    modelCaches: option({
      schema: z.enum(["on", "off"]),
      default: "off",
      env: ["COLDSTART_MODEL_CACHES"],
      flag: "--model-caches <mode>",
      help: "on: stage, pin and report the ModelCache resources that select this node (needs kube.nodeName, credentials, and the CRD of deploy/components/modelcache); off: ignore them.",
    }),
  },
  wait: {
    source: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_SOURCE"],
      flag: "--source <uri>",
      help: "s3://bucket/prefix/ of the model: stage it on demand if the daemon does not hold it.",
    }),
    include: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_WAIT_INCLUDE"],
      flag: "--include <glob>",
      repeatable: true,
      help: "With --source: stage only keys (relative to the prefix) matching one of these globs, as a CSI volume's include attribute and a ModelCache's spec.include do; every pod and resource of one model id must send the same. Repeatable.",
    }),
    exclude: option({
      schema: stringList,
      default: [],
      env: ["COLDSTART_WAIT_EXCLUDE"],
      flag: "--exclude <glob>",
      repeatable: true,
      help: "With --source: skip keys matching any of these globs; wins over --include. Repeatable.",
    }),
    socket: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_SOCKET"],
      flag: "--socket <path>",
      help: "The daemon's unix socket (default /run/coldstart/coldstart.sock unless --url is given).",
    }),
    url: option({
      schema: httpUrl.optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_URL"],
      flag: "--url <url>",
      help: "The daemon's TCP API instead of the socket (needs --token-file).",
    }),
    tokenFile: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_TOKEN_FILE"],
      flag: "--token-file <path>",
      help: "File whose first line is the bearer token for --url.",
    }),
    timeoutMs: option({
      schema: duration,
      default: 15 * 60_000,
      env: ["COLDSTART_WAIT_TIMEOUT"],
      flag: "--timeout <duration>",
      help: "Give up (exit 3) if the model is not ready by then; also bounds retries while the daemon starts.",
    }),
    envFile: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_ENV_FILE"],
      flag: "--env-file <path>",
      help: "Write COLDSTART_MODEL_PATH=… there for the main container to source.",
    }),
    compileCache: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_WAIT_COMPILE_CACHE"],
      flag: "--compile-cache",
      help: "Also restore the compile cache keyed by this node's GPU and the identity flags (--vllm, --torch, ...) and point VLLM_CACHE_ROOT at it.",
    }),
    compileCacheTimeoutMs: option({
      schema: durationIn(0, 600_000),
      default: 2 * 60_000,
      env: ["COLDSTART_WAIT_COMPILE_CACHE_TIMEOUT"],
      flag: "--compile-cache-timeout <duration>",
      help: "Longest a restore may hold the pod; past it the pod starts and compiles (a miss is never a failure).",
    }),
    compileCacheRemote: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_WAIT_COMPILE_CACHE_REMOTE"],
      flag: "--compile-cache-remote <uri>",
      help: "Restore from (and publish to) this remote instead of the daemon's compileCache.remote; must be in compileCache.allow.",
    }),
  },
  node: {
    hostRoot: option({
      schema: absolutePath,
      default: "/",
      env: ["COLDSTART_HOST_ROOT"],
      flag: "--host-root <dir>",
      help: "Where the host's files the probes read are visible: proc, sys and etc/cufile.json under it (the DaemonSet mounts exactly those read-only at /host).",
    }),
    addonPath: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_NATIVE_ADDON"],
      flag: "--native-addon <path>",
      help: "The native addon to load instead of build/Release/coldstart_native.node.",
    }),
    nvmlLibrary: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_NVML_LIBRARY"],
      flag: "--nvml-library <path>",
      help: "NVML library to dlopen instead of the soname libnvidia-ml.so.1.",
    }),
    nvidiaSmi: option({
      schema: z.string().min(1),
      default: "nvidia-smi",
      env: ["COLDSTART_NVIDIA_SMI"],
      flag: "--nvidia-smi <path>",
      help: "nvidia-smi to ask for GPU facts when the native addon or NVML cannot be used.",
    }),
    probeTimeoutMs: option({
      schema: durationIn(100, 600_000),
      default: 20_000,
      env: ["COLDSTART_PROBE_TIMEOUT"],
      flag: "--probe-timeout <duration>",
      help: "Deadline of each native probe process (NVML, cuFile); a probe that hangs is killed and reported.",
    }),
  },
  gds: {
    mode: option({
      schema: z.enum(["auto", "on", "off"]),
      default: "auto",
      env: ["COLDSTART_GDS_MODE"],
      flag: "--gds <mode>",
      help: "auto: probe GDS and recommend a loader; on: refuse to start unless GDS is enabled; off: never probe cuFile (no CUDA context).",
    }),
    cufileLibrary: option({
      schema: z.string().min(1).optional(),
      default: undefined,
      env: ["COLDSTART_CUFILE_LIBRARY"],
      flag: "--cufile-library <path>",
      help: "libcufile to dlopen instead of the sonames libcufile.so.0 and libcufile.so.",
    }),
    cufileJson: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_CUFILE_JSON", "CUFILE_ENV_PATH_JSON"],
      flag: "--cufile-json <path>",
      help: "cufile.json to read (and hand to the cuFile probe) instead of <node.hostRoot>/etc/cufile.json.",
    }),
  },
  csi: {
    socketPath: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_CSI_SOCKET"],
      flag: "--csi-socket <path>",
      help: "Unix socket of the CSI node plugin (driver models.coldstart.io), at the same path on the host and in the pod, e.g. /var/lib/kubelet/plugins/models.coldstart.io/csi.sock. Unset: no CSI driver.",
    }),
    kubeletDir: option({
      schema: absolutePath,
      default: "/var/lib/kubelet",
      env: ["COLDSTART_CSI_KUBELET_DIR"],
      flag: "--csi-kubelet-dir <dir>",
      help: "The kubelet's root directory (--root-dir): the driver mounts only at target paths below its pods/ directory.",
    }),
    registrationDir: option({
      schema: absolutePath.optional(),
      default: undefined,
      env: ["COLDSTART_CSI_REGISTRATION_DIR"],
      flag: "--csi-registration-dir <dir>",
      help: "The kubelet's plugin registration directory (/var/lib/kubelet/plugins_registry): the daemon registers its CSI driver there itself. Unset: it does not register (tests, or a node-driver-registrar sidecar).",
    }),
    allow: option({
      schema: stringList.pipe(
        z.array(
          z
            .string()
            .regex(
              /^[^=]+=.+$/,
              "must be <namespace glob>=<source glob>, e.g. ml-*=s3://models/meta-llama/**",
            ),
        ),
      ),
      default: [],
      env: ["COLDSTART_CSI_ALLOW"],
      flag: "--csi-allow <namespace=source>",
      repeatable: true,
      help: "Which pod namespaces may mount which sources through the CSI driver: <namespace glob>=<source glob>. Default deny: a namespace no rule names gets PermissionDenied. sources.allow applies too.",
    }),
    publishWaitMs: option({
      schema: durationIn(0, 110_000),
      default: 100_000,
      env: ["COLDSTART_CSI_PUBLISH_WAIT"],
      flag: "--csi-publish-wait <duration>",
      help: "How long a NodePublishVolume call is held while its model stages before answering UNAVAILABLE with the progress; kept under the kubelet's 2-minute deadline for the call, so the pod starts the moment the model is ready instead of after a retry backoff.",
    }),
  },
  pageCache: {
    warm: option({
      schema: z.enum(["auto", "on", "off"]),
      default: "auto",
      env: ["COLDSTART_PAGE_CACHE_WARM"],
      flag: "--page-cache-warm <mode>",
      help: "Read a ready model into the page cache before its gate opens (wait handshake, CSI publish). auto: unless the node's loader bypasses the page cache (fastsafetensors with GDS enabled); on: always; off: never.",
    }),
    reserveBytes: option({
      schema: byteSizeIn(0),
      default: 2 * 1024 * MiB,
      env: ["COLDSTART_PAGE_CACHE_RESERVE"],
      flag: "--page-cache-reserve <size>",
      help: "Host memory a warm leaves free for the node's pods: it reads at most MemAvailable less this, and never past the daemon's own cgroup limit (pages it reads are charged to it).",
    }),
  },
  placement: {
    require: option({
      schema: stringList
        .pipe(z.array(z.enum([...PLACEMENTS, "auto"])))
        .refine((l) => !l.includes("auto") || l.length === 1, {
          error: "must be auto alone or a list of placements, not both",
        }),
      default: [],
      env: ["COLDSTART_PLACEMENT_REQUIRE"],
      flag: "--require-placement <placement>",
      repeatable: true,
      help: `Placements of the staging root the daemon may start on (${PLACEMENTS.join(", ")}); empty: any, with a warning on the root volume; auto: refuse the root volume where the node has local instance-store NVMe, allow any placement elsewhere (the deploy/ base sets auto).`,
    }),
  },
  log: {
    level: option({
      schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
      default: "info",
      env: ["COLDSTART_LOG_LEVEL"],
      flag: "--log-level <level>",
      help: "Structured log level. Logs are JSON lines: the daemon's on stdout, pull's on stderr (its stdout holds the summary).",
    }),
  },
  output: {
    json: option({
      schema: boolish,
      default: false,
      env: ["COLDSTART_JSON"],
      flag: "--json",
      help: "Print progress as JSON lines and a JSON summary as the last line.",
    }),
    progressIntervalMs: option({
      schema: int(100, 3_600_000),
      default: 2_000,
      env: ["COLDSTART_PROGRESS_INTERVAL_MS"],
      flag: "--progress-interval-ms <ms>",
      help: "How often to print a JSON progress line when not on a TTY.",
    }),
  },
} as const;

export type Schema = typeof schema;
export type Group = keyof Schema;

/** The validated, frozen configuration. */
type OutputOf<T> = T extends OptionSpec<infer S> ? z.output<S> : never;
export type Config = {
  readonly [G in Group]: { readonly [K in keyof Schema[G]]: OutputOf<Schema[G][K]> };
};
