import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { type ParseError, parse, printParseErrorCode } from "jsonc-parser";

/** What the host says about the nvidia-fs kernel module (the GDS kernel half). */
export interface NvidiaFsFacts {
  /** `nvidia_fs` listed in <hostRoot>/proc/modules. */
  loaded: boolean;
  /** From <hostRoot>/proc/driver/nvidia-fs/version (`version: 2.17`); null if absent or unparseable. */
  version: { major: number; minor: number } | null;
  /** <hostRoot>/proc/driver/nvidia-fs/devcount as an integer; null if absent or unparseable. */
  devcount: number | null;
  /** Human-readable notes on what could not be read (e.g. "proc/modules: ENOENT"). */
  notes: string[];
}

/** Reads nvidia-fs facts from the host's procfs under `hostRoot`. Never throws. */
export async function readNvidiaFs(hostRoot: string): Promise<NvidiaFsFacts> {
  const notes: string[] = [];
  const modules = await readHostText(hostRoot, "proc/modules", notes);
  const loaded = modules?.split("\n").some((line) => line.split(" ")[0] === "nvidia_fs") ?? false;

  const versionText = await readHostText(hostRoot, "proc/driver/nvidia-fs/version", notes);
  let version: NvidiaFsFacts["version"] = null;
  if (versionText !== null) {
    const m = /^\s*version\s*:\s*(\d+)\.(\d+)/im.exec(versionText);
    if (m) version = { major: Number(m[1]), minor: Number(m[2]) };
    else notes.push(`proc/driver/nvidia-fs/version: no "version: <major>.<minor>" line`);
  }

  const devcountText = await readHostText(hostRoot, "proc/driver/nvidia-fs/devcount", notes);
  let devcount: number | null = null;
  if (devcountText !== null) {
    const trimmed = devcountText.trim();
    if (/^\d+$/.test(trimmed)) devcount = Number(trimmed);
    else
      notes.push(`proc/driver/nvidia-fs/devcount: not an integer: ${JSON.stringify(trimmed.slice(0, 40))}`);
  }
  return { loaded, version, devcount, notes };
}

/** What cufile.json configures, as far as a GDS verdict cares. */
export interface CufileJsonFacts {
  /** The file read (absolute, as given), or null when none was found. */
  path: string | null;
  /** Whether the file exists and could be read. */
  found: boolean;
  /** properties.allow_compat_mode; the library's default is true when absent. */
  allowCompatMode: boolean;
  /** properties.force_compat_mode (newer releases); default false. */
  forceCompatMode: boolean;
  /** A handful of other scalar settings worth showing, under their dotted JSON path, when present. */
  keys: Record<string, string | number | boolean>;
  /** Parse error text (the file exists but is not JSON-with-comments), or null. */
  error: string | null;
  /** What could not be read, and values of the wrong type that were ignored. */
  notes: string[];
}

/**
 * Settings shown besides the compat flags: I/O sizes and poll mode shape performance, use_pci_p2pdma
 * is the newer kernel-P2PDMA path that works without nvidia-fs, rdma_dev_addr_list names the NICs
 * for remote filesystems, posix_unaligned_writes and parallel_io change how reads are split.
 */
const SHOWN_KEYS = [
  "properties.max_direct_io_size_kb",
  "properties.max_device_cache_size_kb",
  "properties.use_poll_mode",
  "properties.poll_mode_max_size_kb",
  "properties.use_pci_p2pdma",
  "fs.generic.posix_unaligned_writes",
  "execution.parallel_io",
  "logging.level",
];

/**
 * Reads cufile.json: `explicitPath` if given (what CUFILE_ENV_PATH_JSON names; the caller resolves
 * it), else <hostRoot>/etc/cufile.json. The file is JSON with // comments and trailing commas. A
 * missing file leaves the library's defaults; a broken one sets `error` and also keeps the defaults,
 * since values from a half-parsed file would be guesses. Never throws.
 */
export async function readCufileJson(hostRoot: string, explicitPath?: string): Promise<CufileJsonFacts> {
  const file = explicitPath ?? join(hostRoot, "etc/cufile.json");
  const facts: CufileJsonFacts = {
    path: null,
    found: false,
    allowCompatMode: true,
    forceCompatMode: false,
    keys: {},
    error: null,
    notes: [],
  };
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    facts.notes.push(`${file}: ${errCode(e)}`);
    return facts;
  }
  facts.path = file;
  facts.found = true;

  const errors: ParseError[] = [];
  const doc: unknown = parse(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (errors.length > 0) {
    facts.error = errors
      .slice(0, 3)
      .map((e) => `${printParseErrorCode(e.error)} at ${lineCol(text, e.offset)}`)
      .join("; ");
    return facts;
  }
  if (!isObject(doc)) {
    facts.error = "top level is not a JSON object";
    return facts;
  }

  const allow = lookup(doc, "properties.allow_compat_mode");
  if (typeof allow === "boolean") facts.allowCompatMode = allow;
  else if (allow !== undefined) facts.notes.push(`properties.allow_compat_mode is not a boolean; ignored`);
  const force = lookup(doc, "properties.force_compat_mode");
  if (typeof force === "boolean") facts.forceCompatMode = force;
  else if (force !== undefined) facts.notes.push(`properties.force_compat_mode is not a boolean; ignored`);

  for (const key of SHOWN_KEYS) {
    const v = lookup(doc, key);
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") facts.keys[key] = v;
  }
  const rdma = lookup(doc, "properties.rdma_dev_addr_list");
  if (Array.isArray(rdma)) facts.keys["properties.rdma_dev_addr_list.length"] = rdma.length;
  return facts;
}

/** Whether DMA from devices goes through IOMMU translation, which impairs GDS peer-to-peer reads. */
export interface IommuFacts {
  /** true: an IOMMU translates DMA (GDS P2P is impaired); false: off or passthrough; null: cannot tell. */
  enabled: boolean | null;
  /** The IOMMU is on but maps devices one-to-one (no translation), which GDS tolerates. */
  passthrough: boolean;
  /** The kernel command-line tokens that decided it, e.g. ["intel_iommu=on"], ["iommu=pt"]. */
  cmdline: string[];
  /** Entries of <hostRoot>/sys/class/iommu (e.g. ["dmar0","dmar1"]); [] if none or absent. */
  units: string[];
  /** What could not be read, and evidence used besides the command line. */
  notes: string[];
}

/**
 * Reads IOMMU facts from <hostRoot>/proc/cmdline and <hostRoot>/sys/class/iommu. The rules, first
 * match wins:
 * 1. `iommu=pt` or `iommu.passthrough=1` on the command line: not enabled, passthrough.
 * 2. `intel_iommu=off`, `amd_iommu=off` or `iommu=off`: not enabled.
 * 3. `intel_iommu=on`, `amd_iommu=on` or `iommu=force`: enabled.
 * 4. IOMMU units registered in sysfs: enabled, unless every IOMMU group in
 *    <hostRoot>/sys/kernel/iommu_groups is of type "identity" (passthrough built in as the kernel's
 *    default, which leaves no token on the command line).
 * 5. No units (an absent sys/class/iommu means no IOMMU driver bound) and no token: not enabled.
 * When neither the command line nor sysfs can be read, `enabled` is null. A later token for the same
 * parameter overrides an earlier one, as the kernel parses them in order. Never throws.
 */
export async function readIommu(hostRoot: string): Promise<IommuFacts> {
  const notes: string[] = [];
  const cmdlineText = await readHostText(hostRoot, "proc/cmdline", notes);
  const units = await readUnits(hostRoot, notes);
  const facts: IommuFacts = { enabled: null, passthrough: false, cmdline: [], units: units ?? [], notes };
  if (cmdlineText === null && units === null) return facts;

  // Last value per parameter, as the kernel applies them in order.
  const last = new Map<string, string>();
  for (const token of (cmdlineText ?? "").trim().split(/\s+/)) {
    const eq = token.indexOf("=");
    if (eq > 0) last.set(token.slice(0, eq), token.slice(eq + 1));
  }
  const tokens = (pairs: [string, (v: string) => boolean][]): string[] =>
    pairs.flatMap(([k, test]) => {
      const v = last.get(k);
      return v !== undefined && test(v) ? [`${k}=${v}`] : [];
    });
  const hasOpt = (opt: string) => (v: string) => v.split(",").includes(opt);

  const pt = tokens([
    ["iommu", (v) => v === "pt"],
    ["iommu.passthrough", (v) => ["1", "y", "on"].includes(v)],
  ]);
  if (pt.length > 0) return { ...facts, enabled: false, passthrough: true, cmdline: pt };
  const off = tokens([
    ["intel_iommu", hasOpt("off")],
    ["amd_iommu", hasOpt("off")],
    ["iommu", (v) => v === "off"],
  ]);
  if (off.length > 0) return { ...facts, enabled: false, cmdline: off };
  const on = tokens([
    ["intel_iommu", hasOpt("on")],
    ["amd_iommu", hasOpt("on")],
    ["iommu", (v) => v === "force"],
  ]);
  if (on.length > 0) return { ...facts, enabled: true, cmdline: on };
  if (facts.units.length === 0) return { ...facts, enabled: false };

  const types = await readGroupTypes(hostRoot);
  if (types.length > 0 && types.every((t) => t === "identity")) {
    notes.push(`all ${types.length} IOMMU groups are of type identity (passthrough by kernel default)`);
    return { ...facts, enabled: false, passthrough: true };
  }
  return { ...facts, enabled: true };
}

/** null when sysfs itself cannot be read; [] when sysfs is there but has no IOMMU class. */
async function readUnits(hostRoot: string, notes: string[]): Promise<string[] | null> {
  try {
    return (await readdir(join(hostRoot, "sys/class/iommu"))).sort();
  } catch (e) {
    const sysfsThere = await stat(join(hostRoot, "sys/class")).then(
      (s) => s.isDirectory(),
      () => false,
    );
    if (errCode(e) === "ENOENT" && sysfsThere) return [];
    notes.push(`sys/class/iommu: ${errCode(e)}`);
    return null;
  }
}

async function readGroupTypes(hostRoot: string): Promise<string[]> {
  const dir = join(hostRoot, "sys/kernel/iommu_groups");
  const groups = await readdir(dir).catch(() => [] as string[]);
  const types = await Promise.all(
    groups.map((g) =>
      readFile(join(dir, g, "type"), "utf8").then(
        (t) => t.trim(),
        () => null,
      ),
    ),
  );
  return types.filter((t): t is string => t !== null);
}

/** Reads <hostRoot>/<rel>; on failure records "<rel>: <code>" in notes and returns null. */
async function readHostText(hostRoot: string, rel: string, notes: string[]): Promise<string | null> {
  try {
    return await readFile(join(hostRoot, rel), "utf8");
  } catch (e) {
    notes.push(`${rel}: ${errCode(e)}`);
    return null;
  }
}

function errCode(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ?? err.message ?? String(e);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function lookup(doc: Record<string, unknown>, dotted: string): unknown {
  let cur: unknown = doc;
  for (const part of dotted.split(".")) {
    if (!isObject(cur)) return undefined;
    cur = cur[part];
  }
  return cur;
}

function lineCol(text: string, offset: number): string {
  const before = text.slice(0, offset).split("\n");
  return `line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
}
