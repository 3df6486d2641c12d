import { readdir, readFile, realpath, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";

/** Where the staging root's bytes really live. */
export type Placement =
  | "nvme-instance-store"
  | "nvme-ebs"
  | "nvme-local"
  | "non-nvme"
  | "root-volume"
  | "network"
  | "tmpfs"
  | "unknown";

/** One whole disk behind a mount. */
export interface DiskFacts {
  /** Kernel name of a whole disk, e.g. "nvme1n1". */
  name: string;
  /** The disk is an NVMe namespace. */
  nvme: boolean;
  /** <hostRoot>/sys/class/block/<name>/device/model, trimmed; null if absent. */
  model: string | null;
  /**
   * From the model string. "ebs" stands for any network-attached block volume exposed as NVMe (EBS,
   * GCP Persistent Disk); "instance-store" for any local SSD (EC2 instance store, GCP local SSD,
   * Azure NVMe Direct Disk); "nvme" for other NVMe; "other" for everything that is not NVMe.
   */
  kind: "instance-store" | "ebs" | "nvme" | "other";
}

/** A placement warning or GDS blocker: a stable code and a message saying what it means and what to do. */
export interface Finding {
  /** Stable code, e.g. "staging_on_root_volume" or "fs_unsupported:overlay". */
  code: string;
  /** What it means for this node, naming the path and device, and what to do about it. */
  message: string;
}

/** One line of /proc/self/mountinfo, unescaped. */
export interface MountFacts {
  /** Where it is mounted, in this process's mount namespace. */
  mountPoint: string;
  /** The directory of the filesystem mounted there: "/" for a whole filesystem, "/kubelet" for a bind of a subdirectory. */
  root: string;
  /** e.g. "ext4", "xfs", "overlay", "nfs4", "fuse.s3fs". */
  fsType: string;
  /** The mount source, e.g. "/dev/md0", "overlay", "server:/export". */
  source: string;
  /** Per-mount options (e.g. "rw", "relatime"). */
  options: string[];
  /** Per-superblock options (e.g. "data=ordered", "upperdir=..."). */
  superOptions: string[];
  /** "major:minor" of the filesystem's device. */
  device: string;
}

/** A filesystem that lives on instance-store disks only, where the host mounts it whole. */
export interface InstanceStoreMount {
  /** In the host's mount namespace (its init process's table), e.g. "/mnt/k8s-disks/0". */
  mountPoint: string;
  /** e.g. "xfs". */
  fsType: string;
  /** The block device mounted, e.g. "md127" (a RAID0) or "nvme1n1". */
  device: string;
  /** The instance-store disks below it. */
  disks: string[];
}

/** The node's local instance-store NVMe, whatever the staging root is on. */
export interface InstanceStoreFacts {
  /** Every whole instance-store disk in sys/class/block (the models diskKind calls "instance-store"). */
  disks: DiskFacts[];
  /** Filesystems on those disks alone, mounted whole (binds of their subdirectories left out). */
  mounts: InstanceStoreMount[];
  /** Instance-store disks that are not the root volume's: where staging could go instead of "/". */
  spare: string[];
}

/** What is known about where the staging root lives, and what that means for staging and GDS. */
export interface PlacementFacts {
  /** The classification that decides the warnings. */
  placement: Placement;
  /** The staging root as resolved: realpath of its nearest existing ancestor, plus the rest. */
  path: string;
  /** The mount that holds `path`; null when no mount table could be read. */
  mount: MountFacts | null;
  /** Block devices from the mount's device down to whole disks, e.g. ["md0", "nvme1n1", "nvme2n1"]. */
  chain: string[];
  /** The whole disks behind `path` (for overlayfs: behind its upper directory). */
  disks: DiskFacts[];
  /** Whole disks behind the mount that contains hostRoot (the host's "/"). */
  rootDisks: string[];
  /** Whether the staging root shares a disk (or the filesystem) with the host's "/"; null if unknown. */
  sharesRootVolume: boolean | null;
  /** The node's instance-store disks and their mounts, for placement.require auto and the advice. */
  instanceStore: InstanceStoreFacts;
  /** Placement warnings (see the codes in `probePlacement`). */
  warnings: Finding[];
  /** Why GDS cannot work on this filesystem; [] for ext4 (data=ordered) or xfs on NVMe. */
  gdsBlockers: Finding[];
  /** What could not be read or resolved on the way. */
  notes: string[];
}

const TMPFS = new Set(["tmpfs", "ramfs"]);
const NETWORK = new Set([
  "nfs",
  "nfs4",
  "cifs",
  "smb3",
  "smbfs",
  "ceph",
  "glusterfs",
  "lustre",
  "9p",
  "beegfs",
  "gpfs",
  "wekafs",
  "afs",
  "orangefs",
  "pvfs2",
]);
// FUSE filesystems (s3fs, gcsfuse, mountpoint-s3 shows plain "fuse") are almost always remote; fuseblk
// (ntfs-3g and the like on a local block device) is not, so it is left to the block-device path.
const isNetworkFs = (t: string) => NETWORK.has(t) || t === "fuse" || t.startsWith("fuse.");
const GDS_FILESYSTEMS = new Set(["ext4", "xfs"]);
const MAX_DEPTH = 16;

/** The scope of one probe: where the host is and what has been read so far. */
interface Probe {
  hostRoot: string;
  mounts: MountFacts[];
  /** The host init's mount table (<hostRoot>/proc/1/mountinfo) where hostRoot is not "/" and it reads. */
  hostMounts: MountFacts[] | null;
  notes: string[];
}

/** Where a path's bytes live: its mount, the mount that really stores them, and the disks below. */
interface Located {
  mount: MountFacts | null;
  /** Differs from `mount` for overlayfs: the mount holding the upper directory. */
  backing: MountFacts | null;
  chain: string[];
  disks: { name: string; dir: string }[];
}

/**
 * Finds the mount, block devices and disks behind the staging root and classifies its placement, and
 * the node's instance-store disks and where the host mounts them.
 * Warning codes: staging_on_root_volume, instance_store_unused, staging_on_overlayfs, staging_on_tmpfs,
 * staging_on_network_fs, staging_on_remote_disk, not_nvme, root_volume_unknown, placement_unknown. GDS blocker codes:
 * fs_unsupported:<fstype>, fs_unsupported:ext4-data=<mode>, not_nvme, placement_unknown.
 * Never throws: what cannot be read ends up in `notes` and, where it matters, as placement_unknown.
 */
export async function probePlacement(options: {
  hostRoot: string;
  stagingRoot: string;
}): Promise<PlacementFacts> {
  const { hostRoot } = options;
  const notes: string[] = [];
  // This process's own mount table, with the paths it sees: <hostRoot>/proc/self/mountinfo where a
  // test's fake host tree has one, else /proc/self/mountinfo (the DaemonSet mounts only the files
  // the probes read under hostRoot, and "self" of the host's procfs would be some other process).
  const mounts = await readMountTable(hostRoot, notes);
  const probe: Probe = { hostRoot, mounts, hostMounts: await readHostInitTable(hostRoot, notes), notes };

  const path = await resolveExisting(options.stagingRoot);
  const here = await locate(probe, path, 0);
  const root = await locateHostRoot(probe, hostRoot);
  const rootDisks = root.disks.map((d) => d.name);
  const disks = await Promise.all(here.disks.map((d) => diskFacts(d.name, d.dir)));
  const instanceStore = await findInstanceStore(probe, rootDisks);

  const backingType = here.backing?.fsType ?? "";
  const onRam = TMPFS.has(backingType);
  const onNetwork = isNetworkFs(backingType);
  let sharesRootVolume: boolean | null = null;
  if (onRam || onNetwork) sharesRootVolume = false;
  else if (here.backing && root.backing && here.backing.device === root.backing.device)
    sharesRootVolume = true;
  else if (disks.length > 0 && rootDisks.length > 0)
    sharesRootVolume = disks.some((d) => rootDisks.includes(d.name));

  let placement: Placement;
  if (onRam) placement = "tmpfs";
  else if (onNetwork) placement = "network";
  // Same filesystem as "/" says root volume even when sysfs could not name the disk.
  else if (sharesRootVolume === true) placement = "root-volume";
  else if (disks.length === 0) placement = "unknown";
  else if (disks.every((d) => d.kind === "instance-store")) placement = "nvme-instance-store";
  else if (disks.some((d) => d.kind === "ebs")) placement = "nvme-ebs";
  else if (disks.every((d) => d.nvme)) placement = "nvme-local";
  else placement = "non-nvme";

  const facts: PlacementFacts = {
    placement,
    path,
    mount: here.mount,
    chain: here.chain,
    disks,
    rootDisks,
    sharesRootVolume,
    instanceStore,
    warnings: [],
    gdsBlockers: [],
    notes,
  };
  facts.warnings = placementWarnings(facts);
  facts.gdsBlockers = gdsBlockers(facts, !onRam && !onNetwork);
  return facts;
}

function placementWarnings(f: PlacementFacts): Finding[] {
  const out: Finding[] = [];
  const on = (disks: DiskFacts[]) =>
    disks.map((d) => (d.model ? `${d.name} "${d.model}"` : d.name)).join(", ");
  if (f.mount?.fsType === "overlay")
    out.push({
      code: "staging_on_overlayfs",
      message:
        `staging root ${f.path} is inside the container's own writable layer (overlayfs): staged files ` +
        `are lost with the pod and usually sit on the root volume. Mount a hostPath or local volume there.`,
    });
  if (f.placement === "tmpfs")
    out.push({
      code: "staging_on_tmpfs",
      message:
        `staging root ${f.path} is on ${f.mount?.fsType ?? "tmpfs"} (RAM): weights take memory the ` +
        `inference engine needs and vanish on reboot. Point it at a local NVMe mount.`,
    });
  if (f.placement === "network")
    out.push({
      code: "staging_on_network_fs",
      message:
        `staging root ${f.path} is on a network filesystem (${f.mount?.fsType} from ${f.mount?.source}): ` +
        `every load crosses the network, which staging exists to avoid. Point it at a local NVMe mount.`,
    });
  if (f.placement === "root-volume")
    out.push({
      code: "staging_on_root_volume",
      message:
        `staging root ${f.path} is on the root volume (${f.rootDisks.join(", ") || f.mount?.source}): ` +
        `downloads compete with the OS, images and logs for space and I/O, and filling it can evict ` +
        `pods. Point it at a separate local NVMe (instance store) mount.`,
    });
  if (f.placement === "root-volume" && f.instanceStore.spare.length > 0)
    out.push({ code: "instance_store_unused", message: instanceStoreUnused(f) });
  const remote = f.disks.filter((d) => d.kind === "ebs");
  if (remote.length > 0)
    out.push({
      code: "staging_on_remote_disk",
      message:
        `staging root ${f.path} is on network-attached block storage (${on(remote)}): throughput is ` +
        `capped by the volume's provisioned bandwidth. Use instance-store NVMe if the node has it.`,
    });
  const slow = f.disks.filter((d) => !d.nvme);
  if (slow.length > 0)
    out.push({
      code: "not_nvme",
      message:
        `staging root ${f.path} is on ${on(slow)}, not NVMe: loads are slower and GDS cannot be ` +
        `used. Prefer an NVMe mount.`,
    });
  // A wrong node.hostRoot (e.g. "/" inside a pod) finds only the container's overlay for "/": say so
  // rather than let a staging root on the root volume pass as a plain data disk.
  if (f.sharesRootVolume === null && f.disks.length > 0)
    out.push({
      code: "root_volume_unknown",
      message:
        `could not find the disk behind the host's / (node.hostRoot), so whether staging root ${f.path} ` +
        `shares the root volume is unknown. In a pod, mount the host's / read-only and set node.hostRoot.`,
    });
  if (f.placement === "unknown")
    out.push({
      code: "placement_unknown",
      message:
        `could not find the block device behind staging root ${f.path} ` +
        `(${f.notes.join("; ") || "no disk found"}); root-volume and NVMe checks were skipped.`,
    });
  return out;
}

function gdsBlockers(f: PlacementFacts, wantsBlockDevice: boolean): Finding[] {
  const out: Finding[] = [];
  const fsType = f.mount?.fsType;
  if (fsType !== undefined && !GDS_FILESYSTEMS.has(fsType))
    out.push({
      code: `fs_unsupported:${fsType}`,
      message:
        `GDS does not read from ${fsType} (staging root ${f.path}); cuFile would fall back to POSIX ` +
        `reads through bounce buffers. Use ext4 (data=ordered) or xfs on NVMe.`,
    });
  if (fsType === "ext4" && f.mount) {
    // No data= option means ordered, the default; newer kernels do not print it.
    const data = [...f.mount.superOptions, ...f.mount.options]
      .find((o) => o.startsWith("data="))
      ?.slice("data=".length);
    if (data !== undefined && data !== "ordered")
      out.push({
        code: `fs_unsupported:ext4-data=${data}`,
        message:
          `ext4 at ${f.mount.mountPoint} is mounted with data=${data}; GDS needs data=ordered (the ` +
          `default). Remount without data=${data}.`,
      });
  }
  const slow = f.disks.filter((d) => !d.nvme).map((d) => d.name);
  if (slow.length > 0)
    out.push({
      code: "not_nvme",
      message: `GDS reads only from NVMe, and staging root ${f.path} is on ${slow.join(", ")}.`,
    });
  if (wantsBlockDevice && f.disks.length === 0)
    out.push({
      code: "placement_unknown",
      message: `no block device found behind staging root ${f.path}, so NVMe support cannot be confirmed.`,
    });
  return out;
}

/** The kind of a whole disk, from its kernel name and its sysfs model string. */
export function diskKind(name: string, model: string | null): DiskFacts["kind"] {
  if (!name.startsWith("nvme")) return "other";
  switch (model) {
    case "Amazon EC2 NVMe Instance Storage":
    case "nvme_card": // GCP local SSD
      return "instance-store";
    case "Amazon Elastic Block Store":
    case "nvme_card-pd": // GCP Persistent Disk / Hyperdisk: remote, like EBS
      return "ebs";
  }
  if (model?.startsWith("Microsoft NVMe Direct Disk")) return "instance-store"; // Azure local NVMe
  return "nvme";
}

async function diskFacts(name: string, dir: string): Promise<DiskFacts> {
  // Real sysfs pads model strings with spaces to the field width.
  const raw = await readFile(join(dir, "device/model"), "utf8").catch(() => null);
  const model = raw?.trim() || null;
  return { name, nvme: name.startsWith("nvme"), model, kind: diskKind(name, model) };
}

/**
 * Parses /proc/<pid>/mountinfo (proc(5)): `id parent maj:min root mountpoint options
 * optional-fields... - fstype source superoptions`, with octal escapes (`\040` for a space) undone.
 * Malformed lines are skipped.
 */
export function parseMountinfo(text: string): MountFacts[] {
  const out: MountFacts[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    const [, , device, root, mountPoint, options] = f;
    const [fsType, source, superOptions] = sep > 0 ? f.slice(sep + 1) : [];
    if (device === undefined || root === undefined || mountPoint === undefined || options === undefined)
      continue;
    if (fsType === undefined || source === undefined) continue;
    out.push({
      mountPoint: unescapeOctal(mountPoint),
      root: unescapeOctal(root),
      fsType,
      source: unescapeOctal(source),
      options: options.split(","),
      superOptions: superOptions ? superOptions.split(",") : [],
      device,
    });
  }
  return out;
}

function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

async function readMountTable(hostRoot: string, notes: string[]): Promise<MountFacts[]> {
  const hostTable = join(hostRoot, "proc/self/mountinfo");
  const tried: string[] = [];
  for (const file of new Set([hostTable, "/proc/self/mountinfo"])) {
    try {
      return parseMountinfo(await readFile(file, "utf8"));
    } catch (e) {
      tried.push(`${file}: ${errCode(e)}`);
    }
  }
  // Only a table that could not be read at all is worth a note: the first missing is the usual case.
  notes.push(...tried);
  return [];
}

/**
 * Where the host's "/" lives. With a host view that is not a bind of the host's "/" (a DaemonSet that
 * mounts only proc and sys under hostRoot), the host's init process's mount table says: its "/"
 * line carries the root filesystem's device (mountinfo is world-readable). Otherwise, or if that
 * finds no disk, the mount in this table that holds hostRoot.
 */
async function locateHostRoot(probe: Probe, hostRoot: string): Promise<Located> {
  if (probe.hostMounts) {
    const found = await locate({ ...probe, mounts: probe.hostMounts }, "/", 0);
    if (found.disks.length > 0) return found;
  }
  return locate(probe, await resolveExisting(hostRoot), 0);
}

/** <hostRoot>/proc/1/mountinfo, the host init's mount table, where hostRoot is not "/"; else null. */
async function readHostInitTable(hostRoot: string, notes: string[]): Promise<MountFacts[] | null> {
  if (resolve(hostRoot) === "/") return null;
  const file = join(hostRoot, "proc/1/mountinfo");
  try {
    return parseMountinfo(await readFile(file, "utf8"));
  } catch (e) {
    if (errCode(e) !== "ENOENT") notes.push(`${file}: ${errCode(e)}`);
    return null;
  }
}

/** Kernel names of NVMe namespaces (nvme1n1), not their partitions or multipath paths (nvme0c0n1). */
const NVME_NAMESPACE = /^nvme\d+n\d+$/;

/**
 * The node's instance-store disks, from <hostRoot>/sys/class/block and each disk's model (the
 * disks the staging root is on are found the same way), and the filesystems that live on them alone
 * as the host mounts them: its init's table where there is one, else this process's. A mount of a
 * subdirectory (the EKS AMI binds /var/lib/kubelet from its RAID0) is left out: the suggestion is the
 * array's own mount. Nothing here is noted: a node without instance storage is the common case.
 */
async function findInstanceStore(probe: Probe, rootDisks: string[]): Promise<InstanceStoreFacts> {
  const classBlock = join(probe.hostRoot, "sys/class/block");
  const names = (await readdir(classBlock).catch(() => [] as string[])).filter((n) => NVME_NAMESPACE.test(n));
  const found = await Promise.all(
    names.sort(byKernelName).map(async (name) => {
      const dir = await realpath(join(classBlock, name)).catch(() => null);
      return dir === null ? null : diskFacts(name, dir);
    }),
  );
  const disks = found.filter((d): d is DiskFacts => d?.kind === "instance-store");
  if (disks.length === 0) return { disks, mounts: [], spare: [] };
  const local = new Set(disks.map((d) => d.name));
  const quiet: Probe = { ...probe, notes: [] };
  const mounts: InstanceStoreMount[] = [];
  const seen = new Set<string>();
  for (const m of probe.hostMounts ?? probe.mounts) {
    const blockLike = m.source.startsWith("/dev/") || !m.device.startsWith("0:");
    if (m.root !== "/" || !blockLike || seen.has(m.mountPoint)) continue;
    if (TMPFS.has(m.fsType) || isNetworkFs(m.fsType) || m.fsType === "overlay") continue;
    const dir = await deviceDir(quiet, m);
    if (dir === null) continue;
    const chain: string[] = [];
    const below: Located["disks"] = [];
    await walk(quiet, dir, chain, below, []);
    if (below.length === 0 || !below.every((d) => local.has(d.name))) continue;
    seen.add(m.mountPoint);
    mounts.push({
      mountPoint: m.mountPoint,
      fsType: m.fsType,
      device: chain[0] ?? basename(dir),
      disks: below.map((d) => d.name),
    });
  }
  return { disks, mounts, spare: disks.map((d) => d.name).filter((n) => !rootDisks.includes(n)) };
}

/** nvme2n1 before nvme10n1. */
function byKernelName(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

/** Where the EKS AMI mounts the RAID0 of instance-store disks (nodeadm localStorage strategy RAID0). */
const EKS_INSTANCE_STORE_MOUNT = "/mnt/k8s-disks/0";

/**
 * The instance-store disks that staging could use instead of the root volume, where they are
 * mounted, and what to do: `found` ("nvme1n1, nvme2n1 ("Amazon EC2 NVMe Instance Storage") mounted at
 * /mnt/k8s-disks/0 (xfs on md127)") and `fix` (a sentence). Null where there are none.
 */
export function spareInstanceStore(f: PlacementFacts): { found: string; fix: string } | null {
  const is = f.instanceStore;
  const spare = is.disks.filter((d) => is.spare.includes(d.name));
  if (spare.length === 0) return null;
  const usable = is.mounts.filter((m) => m.disks.some((d) => is.spare.includes(d)));
  const where =
    usable.length > 0
      ? `mounted at ${usable.map((m) => `${m.mountPoint} (${m.fsType} on ${m.device})`).join(", ")}`
      : "not mounted";
  const found = `${spare.map((d) => d.name).join(", ")} ("${spare[0]?.model}") ${where}`;
  const at = usable[0]?.mountPoint;
  const component = "kustomize component deploy/components/instance-store";
  const fix =
    at === undefined
      ? `Mount them (on EKS, instanceStorePolicy: RAID0 in the Karpenter EC2NodeClass, or nodeadm's ` +
        `localStorage strategy RAID0, makes them one RAID0 at ${EKS_INSTANCE_STORE_MOUNT}) and point the ` +
        `staging root there: the DaemonSet's staging hostPath ${EKS_INSTANCE_STORE_MOUNT}/coldstart (${component})`
      : `Point the staging root at the instance-store mount: the DaemonSet's staging hostPath ` +
        `${join(at, "coldstart")} (${at === EKS_INSTANCE_STORE_MOUNT ? component : `as the ${component} does for ${EKS_INSTANCE_STORE_MOUNT}`})`;
  return { found, fix };
}

function instanceStoreUnused(f: PlacementFacts): string {
  const spare = spareInstanceStore(f);
  const root = f.rootDisks.join(", ") || f.mount?.source || "unknown";
  return (
    `this node has local instance-store NVMe ${spare?.found}, and staging root ${f.path} is on the root ` +
    `volume (${root}) instead. ${spare?.fix}.`
  );
}

/** The mount holding `path`: the longest mount point that is a component-wise prefix, the last one on a tie. */
function mountFor(mounts: MountFacts[], path: string): MountFacts | null {
  let best: MountFacts | null = null;
  for (const m of mounts) {
    const mp = m.mountPoint;
    const contains = mp === "/" || path === mp || path.startsWith(`${mp}/`);
    // Later mounts on the same point shadow earlier ones.
    if (contains && (best === null || mp.length >= best.mountPoint.length)) best = m;
  }
  return best;
}

/** Realpath of the nearest existing ancestor plus the rest: the staging root may not exist yet. */
async function resolveExisting(path: string): Promise<string> {
  const abs = resolve(path);
  const rest: string[] = [];
  let cur = abs;
  for (;;) {
    try {
      return join(await realpath(cur), ...rest);
    } catch {
      const parent = dirname(cur);
      if (parent === cur) return abs;
      rest.unshift(basename(cur));
      cur = parent;
    }
  }
}

async function locate(probe: Probe, path: string, depth: number): Promise<Located> {
  const mount = mountFor(probe.mounts, path);
  if (mount === null) {
    if (probe.mounts.length > 0) probe.notes.push(`no mount holds ${path}`);
    return { mount: null, backing: null, chain: [], disks: [] };
  }
  if (mount.fsType === "overlay") {
    // The writable layer's bytes live in upperdir, a path in the host's namespace: find its mount.
    const upper = [...mount.superOptions, ...mount.options].find((o) => o.startsWith("upperdir="));
    if (upper === undefined || depth >= 4) {
      probe.notes.push(`overlay at ${mount.mountPoint}: ${upper ? "nested too deep" : "no upperdir"}`);
      return { mount, backing: null, chain: [], disks: [] };
    }
    const upperPath = await resolveExisting(join(probe.hostRoot, upper.slice("upperdir=".length)));
    const inner = await locate(probe, upperPath, depth + 1);
    return { ...inner, mount };
  }
  if (TMPFS.has(mount.fsType) || isNetworkFs(mount.fsType))
    return { mount, backing: mount, chain: [], disks: [] };

  const chain: string[] = [];
  const disks: Located["disks"] = [];
  const dir = await deviceDir(probe, mount);
  if (dir !== null) await walk(probe, dir, chain, disks, []);
  return { mount, backing: mount, chain, disks };
}

/** The sysfs directory of the mount's block device, or null (noted) when none can be found. */
async function deviceDir(probe: Probe, mount: MountFacts): Promise<string | null> {
  const sys = join(probe.hostRoot, "sys");
  // A symlink into /sys/devices in real sysfs.
  const byNumber = join(sys, "dev/block", mount.device);
  const found = await realpath(byNumber).catch(() => null);
  if (found !== null) return found;
  // Filesystems with anonymous device numbers (btrfs, 0:xx) still name their device as the source.
  if (mount.source.startsWith("/dev/")) {
    const byName = join(sys, "class/block", basename(mount.source));
    const named = await realpath(byName).catch(() => null);
    if (named !== null) return named;
    // /dev/mapper/<name> and /dev/disk/by-*/ links point at the kernel name.
    const devLink = await realpath(join(probe.hostRoot, mount.source)).catch(() => null);
    const linked = devLink && (await realpath(join(sys, "class/block", basename(devLink))).catch(() => null));
    if (linked) return linked;
    probe.notes.push(`no sysfs entry for ${mount.device} or ${mount.source} under ${sys}`);
    return null;
  }
  probe.notes.push(`no sysfs entry for ${mount.device} (${mount.fsType} from ${mount.source}) under ${sys}`);
  return null;
}

/**
 * Walks from a block device down to whole disks: partitions to their disk, md/dm to their members.
 * `above` holds the devices on the way here, to stop on a cycle; a disk reached twice (two partitions
 * of one disk in one array) is listed once.
 */
async function walk(probe: Probe, dir: string, chain: string[], disks: Located["disks"], above: string[]) {
  const name = basename(dir);
  if (above.includes(dir) || above.length > MAX_DEPTH) {
    probe.notes.push(`block device ${above.includes(dir) ? "cycle" : "chain too deep"} at ${name}`);
    return;
  }
  if (!chain.includes(name)) chain.push(name);
  const path = [...above, dir];
  if (await exists(join(dir, "partition"))) {
    // A partition's directory sits inside its disk's directory.
    await walk(probe, dirname(dir), chain, disks, path);
    return;
  }
  const members = (await readdir(join(dir, "slaves")).catch(() => [] as string[])).sort();
  if (members.length === 0) {
    if (!disks.some((d) => d.name === name)) disks.push({ name, dir });
    return;
  }
  for (const member of members) {
    const memberDir =
      (await realpath(join(probe.hostRoot, "sys/class/block", member)).catch(() => null)) ??
      (await realpath(join(dir, "slaves", member)).catch(() => null));
    if (memberDir === null) probe.notes.push(`${name}: member ${member} not found in sysfs`);
    else await walk(probe, memberDir, chain, disks, path);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function errCode(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ?? err.message ?? String(e);
}
