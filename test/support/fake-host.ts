import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import type { NodeFactsOptions } from "../../src/node/node-facts.js";

/**
 * Fake host trees (proc, sys, etc) for the node probes, laid out like the real kernel's: block
 * devices live under sys/devices, and sys/dev/block/<maj:min>, sys/class/block/<name> and
 * sys/block/<name> are relative symlinks into it, so realpath works inside the tree as on a host.
 * The mount table is this "container's" view: "/" is its overlayfs, the host's "/" is bind-mounted
 * at the temp directory (the hostRoot), and host mounts appear below it, as with a recursive bind.
 */

/** A mount line for `FakeHost.mountinfo`. */
export interface FakeMount {
  /** Absolute mount point; written with the kernel's octal escapes. */
  mountPoint: string;
  fsType: string;
  source: string;
  /** "major:minor". */
  device: string;
  /** The mount's root within its filesystem; "/" unless a bind of a subdirectory. */
  root?: string;
  /** Per-mount options, comma-separated. */
  options?: string;
  /** Per-superblock options, comma-separated. */
  superOptions?: string;
}

/** A partition to create under a disk. */
export interface FakePartition {
  /** Partition number: nvme1n1 + 1 → nvme1n1p1, sda + 1 → sda1. */
  n: number;
  minor: number;
}

/** A scenario: the host tree, the staging root to probe, and how to remove it. */
export interface FakeScenario {
  /** Pass as hostRoot. */
  hostRoot: string;
  /** Pass as stagingRoot. */
  stagingRoot: string;
  /** Removes the tree. */
  cleanup: () => Promise<void>;
}

/**
 * collectNodeFacts options that probe scenario `s` on a node without a GPU: no NVML, no nvidia-smi,
 * GDS off, an empty environment.
 */
export function noGpuFactsOptions(s: FakeScenario): NodeFactsOptions {
  return {
    hostRoot: s.hostRoot,
    stagingRoot: s.stagingRoot,
    gdsMode: "off",
    probeTimeoutMs: 10_000,
    nvidiaSmi: "/nonexistent",
    nvmlLibrary: "/nonexistent",
    env: {},
  };
}

/** Builds a fake host tree in a fresh temp directory; every path argument is relative to `root`. */
export class FakeHost {
  private readonly devices = new Map<string, string>();

  private constructor(
    /** The tree's top (already realpath'd, so it matches resolved paths). */
    readonly root: string,
  ) {}

  /** A new, empty tree under os.tmpdir(). */
  static async create(): Promise<FakeHost> {
    return new FakeHost(await realpath(await mkdtemp(join(tmpdir(), "cs-host-"))));
  }

  /** Removes the tree. */
  async cleanup(): Promise<void> {
    await rm(this.root, { recursive: true, force: true });
  }

  /** Absolute path of `rel` inside the tree. */
  path(rel: string): string {
    return join(this.root, rel);
  }

  /** Writes a file, creating its directories. */
  async file(rel: string, content: string): Promise<void> {
    await mkdir(dirname(this.path(rel)), { recursive: true });
    await writeFile(this.path(rel), content);
  }

  /** Creates a directory and its parents. */
  async dir(rel: string): Promise<void> {
    await mkdir(this.path(rel), { recursive: true });
  }

  /** A relative symlink at `rel` pointing at `targetRel`, as sysfs makes them. */
  async link(rel: string, targetRel: string): Promise<void> {
    const at = this.path(rel);
    await mkdir(dirname(at), { recursive: true });
    await symlink(relative(dirname(at), this.path(targetRel)), at);
  }

  /** An NVMe controller with one namespace and its partitions; returns the disk name. */
  async nvme(o: { ctrl: number; minor: number; model: string; pci: string; partitions?: FakePartition[] }) {
    const ctrlDir = `sys/devices/pci0000:00/${o.pci}/nvme/nvme${o.ctrl}`;
    // The NVMe model field is 40 bytes; sysfs shows it space-padded.
    await this.file(`${ctrlDir}/model`, `${o.model.padEnd(40)}\n`);
    await this.file(`${ctrlDir}/serial`, `${`AWS${o.ctrl}2F3C8E9D1B4A7`.padEnd(20)}\n`);
    const name = `nvme${o.ctrl}n1`;
    const diskDir = `${ctrlDir}/${name}`;
    await this.link(`${diskDir}/device`, ctrlDir);
    await this.blockDevice(name, diskDir, 259, o.minor, true);
    for (const p of o.partitions ?? []) await this.partition(name, `${name}p${p.n}`, 259, p);
    return name;
  }

  /** A SCSI/SATA disk (sdX, major 8) and its partitions; returns the disk name. */
  async scsi(o: { name: string; minor: number; model: string; partitions?: FakePartition[] }) {
    const devDir = "sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";
    // The SCSI model field is 16 bytes, space-padded.
    await this.file(`${devDir}/model`, `${o.model.padEnd(16)}\n`);
    await this.file(`${devDir}/vendor`, "ATA     \n");
    const diskDir = `${devDir}/block/${o.name}`;
    await this.link(`${diskDir}/device`, devDir);
    await this.blockDevice(o.name, diskDir, 8, o.minor, true);
    for (const p of o.partitions ?? []) await this.partition(o.name, `${o.name}${p.n}`, 8, p);
    return o.name;
  }

  /** An md RAID array (major 9) over existing devices. */
  async md(name: string, minor: number, level: string, members: string[]): Promise<string> {
    const dir = `sys/devices/virtual/block/${name}`;
    await this.file(`${dir}/md/level`, `${level}\n`);
    await this.virtual(name, dir, 9, minor, members);
    return name;
  }

  /** A device-mapper device (major 253), e.g. an LVM volume, over existing devices. */
  async dm(name: string, minor: number, dmName: string, members: string[]): Promise<string> {
    const dir = `sys/devices/virtual/block/${name}`;
    await this.file(`${dir}/dm/name`, `${dmName}\n`);
    await this.virtual(name, dir, 253, minor, members);
    await this.link(`dev/mapper/${dmName}`, `dev/${name}`);
    await this.file(`dev/${name}`, "");
    return name;
  }

  /** Writes proc/self/mountinfo with the kernel's escaping; ids and parents are made up but consistent. */
  async mountinfo(mounts: FakeMount[], file = "proc/self/mountinfo"): Promise<void> {
    const lines = mounts.map((m, i) => {
      const id = 1500 + i;
      const parent = i === 0 ? 1200 : 1500;
      const mp = escapeMountField(m.mountPoint);
      const root = escapeMountField(m.root ?? "/");
      const opts = m.options ?? "rw,relatime";
      const sup = m.superOptions ?? "rw";
      return `${id} ${parent} ${m.device} ${root} ${mp} ${opts} master:${i + 1} - ${m.fsType} ${escapeMountField(m.source)} ${sup}`;
    });
    await this.file(file, `${lines.join("\n")}\n`);
  }

  /** proc/modules listing these module names. */
  async modules(names: string[]): Promise<void> {
    const lines = names.map((n, i) => `${n} ${245760 + i * 4096} 0 - Live 0xffffffffc0${i}a0000 (OE)`);
    await this.file("proc/modules", `${lines.join("\n")}\n`);
  }

  /** proc/driver/nvidia-fs/{version,devcount}. */
  async nvidiaFs(version: string, devcount: number): Promise<void> {
    await this.file("proc/driver/nvidia-fs/version", `version: ${version}\n`);
    await this.file("proc/driver/nvidia-fs/devcount", `${devcount}\n`);
  }

  /** sys/class/iommu/<unit> links into sys/devices/virtual/iommu; [] leaves the class empty. */
  async iommuUnits(units: string[]): Promise<void> {
    await this.dir("sys/class/iommu");
    for (const u of units) {
      await this.dir(`sys/devices/virtual/iommu/${u}`);
      await this.link(`sys/class/iommu/${u}`, `sys/devices/virtual/iommu/${u}`);
    }
  }

  private async blockDevice(name: string, dir: string, major: number, minor: number, whole: boolean) {
    await this.file(`${dir}/dev`, `${major}:${minor}\n`);
    await this.file(`${dir}/size`, "1875385008\n");
    await this.file(`${dir}/queue/rotational`, "0\n");
    await this.dir(`${dir}/holders`);
    await this.dir(`${dir}/slaves`);
    await this.link(`sys/dev/block/${major}:${minor}`, dir);
    await this.link(`sys/class/block/${name}`, dir);
    if (whole) await this.link(`sys/block/${name}`, dir);
    this.devices.set(name, dir);
  }

  private async partition(disk: string, name: string, major: number, p: FakePartition): Promise<void> {
    const dir = `${this.deviceDir(disk)}/${name}`;
    await this.file(`${dir}/partition`, `${p.n}\n`);
    await this.blockDevice(name, dir, major, p.minor, false);
  }

  private async virtual(name: string, dir: string, major: number, minor: number, members: string[]) {
    await this.blockDevice(name, dir, major, minor, true);
    for (const m of members) {
      await this.link(`${dir}/slaves/${m}`, this.deviceDir(m));
      await this.link(`${this.deviceDir(m)}/holders/${name}`, dir);
    }
  }

  private deviceDir(name: string): string {
    const dir = this.devices.get(name);
    if (dir === undefined) throw new Error(`fake host: no block device ${name} yet`);
    return dir;
  }
}

/** Escapes a mountinfo field as the kernel does: space, tab, newline and backslash as octal. */
export function escapeMountField(s: string): string {
  return s.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`);
}

/**
 * A cufile.json like the one GDS installs: // comments, a commented-out key, and trailing commas.
 * `allowCompatMode` undefined leaves the key out (the library then defaults to true).
 */
export function cufileJsonText(o: { allowCompatMode?: boolean; extraProperties?: string } = {}): string {
  const compat =
    o.allowCompatMode === undefined ? "" : `        "allow_compat_mode": ${o.allowCompatMode},\n`;
  return `{
    // NOTE : Application can override custom configuration via export CUFILE_ENV_PATH_JSON=<filepath>
    // e.g : export CUFILE_ENV_PATH_JSON="/home/<xxx>/cufile.json"
    "logging": {
        // log directory, if not enabled will create log file under current working directory
        //"dir": "/home/<xxxx>",
        // NOTICE|ERROR|WARN|INFO|DEBUG|TRACE (in decreasing order of severity)
        "level": "ERROR",
    },
    "execution" : {
        // max number of workitems in the queue;
        "max_io_queue_depth": 128,
        // enable support for parallel IO
        "parallel_io" : true,
        "min_io_threshold_size_kb" : 8192,
    },
    "properties": {
        // max IO chunk size (parameter should be multiples of 64K) used by cuFileRead/Write internally per IO request
        "max_direct_io_size_kb" : 16384,
        // device memory size (parameter should be 4K aligned) for reserving bounce buffers for the entire GPU
        "max_device_cache_size_kb" : 131072,
        // true or false (true will enable asynchronous io submission to nvidia-fs driver)
        "use_poll_mode" : false,
        "poll_mode_max_size_kb": 4,
        // allow compat mode, this will enable use of cuFile posix read/writes
${compat}        // client-side rdma addr list for user-space file-systems(e.g ["10.0.1.0", "10.0.2.0"])
        "rdma_dev_addr_list": [ ],
${o.extraProperties ?? ""}    },
    "fs": {
        "generic": {
            // for unaligned writes, setting it to true will, cuFileWrite use posix write internally instead of regular GDS write
            "posix_unaligned_writes" : false,
        },
    },
    "miscellaneous": {
        "api_check_aggressive": false,
    },
}
`;
}

const UPPERDIR = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/142/fs";
const CMDLINE =
  "BOOT_IMAGE=/vmlinuz-6.8.0-1021-aws root=PARTUUID=5a3b9c0e-01 ro console=tty1 console=ttyS0 " +
  "nvme_core.io_timeout=4294967295 panic=-1\n";
const BASE_MODULES = ["nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia", "ena", "nvme", "nvme_core"];
export const INSTANCE_STORE = "Amazon EC2 NVMe Instance Storage";
export const EBS = "Amazon Elastic Block Store";

/**
 * An EC2 GPU node seen from a DaemonSet pod: root on EBS (nvme0n1p1 ext4, 259:1, plus the EFI
 * partition nvme0n1p15), the host's /run on tmpfs, no IOMMU, no GDS unless `modules` says so.
 * Returns the container's base mount lines; pass them with the scenario's own to `mountinfo`.
 */
export async function ec2Node(h: FakeHost, modules: string[] = BASE_MODULES): Promise<FakeMount[]> {
  const r = h.root;
  await h.nvme({
    ctrl: 0,
    minor: 0,
    model: EBS,
    pci: "0000:00:04.0",
    partitions: [
      { n: 1, minor: 1 },
      { n: 15, minor: 2 },
    ],
  });
  await h.modules(modules);
  await h.file("proc/cmdline", CMDLINE);
  await h.iommuUnits([]);
  await h.dir(UPPERDIR.slice(1));
  await h.dir("var/lib/coldstart");
  return [
    {
      mountPoint: "/",
      fsType: "overlay",
      source: "overlay",
      device: "0:320",
      superOptions:
        "rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/101/fs:" +
        `/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/100/fs,upperdir=${UPPERDIR},` +
        "workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/142/work",
    },
    {
      mountPoint: "/proc",
      fsType: "proc",
      source: "proc",
      device: "0:323",
      options: "rw,nosuid,nodev,noexec",
    },
    { mountPoint: "/dev", fsType: "tmpfs", source: "tmpfs", device: "0:324", superOptions: "rw,size=65536k" },
    { mountPoint: "/sys", fsType: "sysfs", source: "sysfs", device: "0:325", options: "ro,nosuid,nodev" },
    {
      mountPoint: "/etc/hosts",
      root: "/var/lib/kubelet/pods/0b6f5a1e-7c1d-4e43-9d7a-2f0d3c9b8e51/etc-hosts",
      fsType: "ext4",
      source: "/dev/nvme0n1p1",
      device: "259:1",
      superOptions: "rw,discard,errors=remount-ro,commit=30",
    },
    {
      mountPoint: r,
      fsType: "ext4",
      source: "/dev/nvme0n1p1",
      device: "259:1",
      superOptions: "rw,discard,errors=remount-ro,commit=30",
    },
    { mountPoint: `${r}/boot/efi`, fsType: "vfat", source: "/dev/nvme0n1p15", device: "259:2" },
    { mountPoint: `${r}/dev`, fsType: "devtmpfs", source: "udev", device: "0:5" },
    { mountPoint: `${r}/proc`, fsType: "proc", source: "proc", device: "0:22" },
    { mountPoint: `${r}/sys`, fsType: "sysfs", source: "sysfs", device: "0:21" },
    {
      mountPoint: `${r}/run`,
      fsType: "tmpfs",
      source: "tmpfs",
      device: "0:25",
      superOptions: "rw,size=6536436k",
    },
  ];
}

async function scenario(h: FakeHost, stagingRel: string, create = true): Promise<FakeScenario> {
  if (create) await h.dir(stagingRel);
  return { hostRoot: h.root, stagingRoot: h.path(stagingRel), cleanup: () => h.cleanup() };
}

/** Two instance-store disks nvme1n1 (259:3) and nvme2n1 (259:4) as md0 (9:0) RAID0, ext4 at <host>/mnt/md0. */
async function raid0(h: FakeHost): Promise<FakeMount> {
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  await h.nvme({ ctrl: 2, minor: 4, model: INSTANCE_STORE, pci: "0000:00:1e.0" });
  await h.md("md0", 0, "raid0", ["nvme1n1", "nvme2n1"]);
  return {
    mountPoint: h.path("mnt/md0"),
    fsType: "ext4",
    source: "/dev/md0",
    device: "9:0",
    superOptions: "rw,stripe=256",
  };
}

/**
 * GDS fully available: ext4 on md0 (RAID0 of instance-store nvme1n1 + nvme2n1), root on EBS
 * nvme0n1p1, nvidia_fs loaded (version 2.17, devcount 2), cufile.json with comments and
 * allow_compat_mode false, no IOMMU. Staging root <host>/mnt/md0/coldstart.
 */
export async function gdsReady(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await buildGdsReady(h);
  return scenario(h, "mnt/md0/coldstart");
}

async function buildGdsReady(h: FakeHost): Promise<void> {
  const base = await ec2Node(h, ["nvidia_fs", ...BASE_MODULES]);
  await h.mountinfo([...base, await raid0(h)]);
  await h.nvidiaFs("2.17", 2);
  await h.file("etc/cufile.json", cufileJsonText({ allowCompatMode: false }));
}

/** gdsReady's disks, but no nvidia_fs module and cufile.json with allow_compat_mode true: silent POSIX fallback. */
export async function compatOnly(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo([...(await ec2Node(h)), await raid0(h)]);
  await h.file("etc/cufile.json", cufileJsonText({ allowCompatMode: true }));
  return scenario(h, "mnt/md0/coldstart");
}

/** gdsReady's disks and cufile.json (allow_compat_mode false), but nvidia_fs is not loaded: cuFile cannot open. */
export async function nvidiaFsMissing(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo([...(await ec2Node(h)), await raid0(h)]);
  await h.file("etc/cufile.json", cufileJsonText({ allowCompatMode: false }));
  return scenario(h, "mnt/md0/coldstart");
}

/** IOMMU translating: gdsReady plus intel_iommu=on and sys/class/iommu/{dmar0,dmar1}. */
export async function iommuOn(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await buildGdsReady(h);
  await h.file("proc/cmdline", CMDLINE.replace(" ro ", " ro intel_iommu=on "));
  await h.iommuUnits(["dmar0", "dmar1"]);
  return scenario(h, "mnt/md0/coldstart");
}

/**
 * Staging root inside the container's own overlayfs "/" (no volume mounted there): a sibling of the
 * host tree that does not exist, so only "/" holds it. The upperdir lives on the root EBS volume.
 */
export async function onOverlay(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo(await ec2Node(h));
  return {
    hostRoot: h.root,
    stagingRoot: join(dirname(h.root), `${basename(h.root)}-ctr`, "models"),
    cleanup: () => h.cleanup(),
  };
}

/** Staging root in <host>/var/lib/coldstart, a plain directory on the root EBS volume (nvme0n1p1). */
export async function onRootVolume(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo(await ec2Node(h));
  return scenario(h, "var/lib/coldstart");
}

/** Staging root on the host's /run tmpfs. */
export async function onTmpfs(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo(await ec2Node(h));
  return scenario(h, "run/coldstart");
}

/** ext4 mounted data=journal on a single instance-store disk nvme1n1 (GDS needs data=ordered). */
export async function ext4DataJournal(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  const mnt = { mountPoint: h.path("mnt/nvme1"), fsType: "ext4", source: "/dev/nvme1n1", device: "259:3" };
  await h.mountinfo([...base, { ...mnt, superOptions: "rw,data=journal" }]);
  return scenario(h, "mnt/nvme1/coldstart");
}

/** xfs on a single, unpartitioned instance-store disk nvme1n1; the staging directory does not exist yet. */
export async function xfsInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  const mnt = { mountPoint: h.path("mnt/local"), fsType: "xfs", source: "/dev/nvme1n1", device: "259:3" };
  await h.mountinfo([...base, { ...mnt, superOptions: "rw,attr2,inode64,logbufs=8,logbsize=32k,noquota" }]);
  await h.dir("mnt/local");
  return scenario(h, "mnt/local/coldstart/models", false);
}

/** ext4 on partition nvme1n1p1 (259:5) of an instance-store disk. */
export async function partitionedInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({
    ctrl: 1,
    minor: 3,
    model: INSTANCE_STORE,
    pci: "0000:00:1f.0",
    partitions: [{ n: 1, minor: 5 }],
  });
  await h.mountinfo([
    ...base,
    { mountPoint: h.path("mnt/nvme1p1"), fsType: "ext4", source: "/dev/nvme1n1p1", device: "259:5" },
  ]);
  return scenario(h, "mnt/nvme1p1/coldstart");
}

/** xfs on LVM striped over partitions of two instance-store disks: dm-0 over nvme1n1p1 and nvme2n1p1. */
export async function lvmOverPartitions(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({
    ctrl: 1,
    minor: 3,
    model: INSTANCE_STORE,
    pci: "0000:00:1f.0",
    partitions: [{ n: 1, minor: 5 }],
  });
  await h.nvme({
    ctrl: 2,
    minor: 4,
    model: INSTANCE_STORE,
    pci: "0000:00:1e.0",
    partitions: [{ n: 1, minor: 6 }],
  });
  await h.dm("dm-0", 0, "vg_local-lv_models", ["nvme1n1p1", "nvme2n1p1"]);
  await h.mountinfo([
    ...base,
    {
      mountPoint: h.path("mnt/models"),
      fsType: "xfs",
      source: "/dev/mapper/vg_local-lv_models",
      device: "253:0",
    },
  ]);
  return scenario(h, "mnt/models/coldstart");
}

/** btrfs (anonymous device 0:45, no sys/dev/block entry) on instance-store nvme1n1, found by its /dev source. */
export async function btrfsInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  await h.mountinfo([
    ...base,
    {
      mountPoint: h.path("mnt/btrfs"),
      root: "/@models",
      fsType: "btrfs",
      source: "/dev/nvme1n1",
      device: "0:45",
      superOptions: "rw,ssd,discard=async,space_cache=v2,subvolid=256,subvol=/@models",
    },
  ]);
  return scenario(h, "mnt/btrfs/coldstart");
}

/** EFS over NFSv4.1 at <host>/mnt/efs. */
export async function nfs4(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo([
    ...(await ec2Node(h)),
    {
      mountPoint: h.path("mnt/efs"),
      fsType: "nfs4",
      source: "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com:/",
      device: "0:52",
      superOptions: "rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2",
    },
  ]);
  return scenario(h, "mnt/efs/coldstart");
}

/**
 * xfs on instance-store nvme1n1 at a mount point with a space ("<host>/mnt/fast disk", written as
 * `\040`). An earlier tmpfs on the same point is shadowed by it, and a tmpfs at "<host>/mnt/fast" must
 * not match (component-wise prefixes).
 */
export async function escapedMountPoint(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  const tmpfs = { fsType: "tmpfs", source: "tmpfs", device: "0:60" };
  await h.mountinfo([
    ...base,
    { ...tmpfs, mountPoint: h.path("mnt/fast disk") },
    { ...tmpfs, mountPoint: h.path("mnt/fast"), device: "0:61" },
    { mountPoint: h.path("mnt/fast disk"), fsType: "xfs", source: "/dev/nvme1n1", device: "259:3" },
  ]);
  return scenario(h, "mnt/fast disk/coldstart");
}

/** A second EBS volume nvme1n1 (not the root one) with ext4 at <host>/mnt/data. */
export async function ebsDataVolume(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: EBS, pci: "0000:00:1f.0" });
  await h.mountinfo([
    ...base,
    { mountPoint: h.path("mnt/data"), fsType: "ext4", source: "/dev/nvme1n1", device: "259:3" },
  ]);
  return scenario(h, "mnt/data/coldstart");
}

/** An on-premises NVMe SSD (not a cloud model string) with xfs at <host>/mnt/nvme. */
export async function onPremNvme(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.nvme({ ctrl: 1, minor: 3, model: "SAMSUNG MZQL27T6HBLA-00A07", pci: "0000:01:00.0" });
  await h.mountinfo([
    ...base,
    { mountPoint: h.path("mnt/nvme"), fsType: "xfs", source: "/dev/nvme1n1", device: "259:3" },
  ]);
  return scenario(h, "mnt/nvme/coldstart");
}

/** A SATA SSD sda (8:0), partition sda1 (8:1), ext4 at <host>/mnt/ssd. */
export async function sataSsd(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const base = await ec2Node(h);
  await h.scsi({ name: "sda", minor: 0, model: "SAMSUNG MZ7LH960", partitions: [{ n: 1, minor: 1 }] });
  await h.mountinfo([
    ...base,
    { mountPoint: h.path("mnt/ssd"), fsType: "ext4", source: "/dev/sda1", device: "8:1" },
  ]);
  return scenario(h, "mnt/ssd/coldstart");
}

/** ext4 on a device number (259:99) with no sysfs entry and no usable source: the disk cannot be found. */
export async function unknownDevice(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  await h.mountinfo([
    ...(await ec2Node(h)),
    { mountPoint: h.path("mnt/mystery"), fsType: "ext4", source: "/dev/root", device: "259:99" },
  ]);
  return scenario(h, "mnt/mystery/coldstart");
}

/**
 * The deploy/ DaemonSet's view: no bind of the host's "/", only its proc and sys under the hostRoot,
 * and the staging root a hostPath bind at /var/lib/coldstart. The host's "/" is found through
 * proc/1/mountinfo (the host's init), which says nvme0n1p1 (259:1).
 */
async function daemonSetView(
  h: FakeHost,
  staging: FakeMount,
  hostMounts: FakeMount[] = [],
): Promise<FakeScenario> {
  const base = await ec2Node(h);
  const container = base.filter((m) => !m.mountPoint.startsWith(h.root));
  await h.mountinfo([
    ...container,
    { mountPoint: h.path("proc"), fsType: "proc", source: "proc", device: "0:22" },
    { mountPoint: h.path("sys"), fsType: "sysfs", source: "sysfs", device: "0:21" },
    staging,
  ]);
  const init = base
    .filter((m) => m.mountPoint.startsWith(h.root))
    .map((m) => ({ ...m, mountPoint: m.mountPoint.slice(h.root.length) || "/" }));
  await h.mountinfo([...init, ...hostMounts], "proc/1/mountinfo");
  return { hostRoot: h.root, stagingRoot: "/var/lib/coldstart", cleanup: () => h.cleanup() };
}

/** The DaemonSet's view with the staging root on the root EBS volume (the hostPath's default). */
export async function daemonSetOnRootVolume(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  return daemonSetView(h, {
    mountPoint: "/var/lib/coldstart",
    root: "/var/lib/coldstart",
    fsType: "ext4",
    source: "/dev/nvme0n1p1",
    device: "259:1",
    superOptions: "rw,discard,errors=remount-ro,commit=30",
  });
}

/** The DaemonSet's view with the host's /var/lib/coldstart on the instance-store RAID0 (md0). */
export async function daemonSetOnInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const md0 = await raid0(h);
  return daemonSetView(h, { ...md0, mountPoint: "/var/lib/coldstart", root: "/" });
}

/**
 * The EKS AMI's instance-store RAID0 (nodeadm's localStorage strategy RAID0, which Karpenter's
 * `instanceStorePolicy: RAID0` asks for): instance-store disks nvme1n1 (259:3) and nvme2n1 (259:4) as
 * md127 (9:127, /dev/md/kubernetes), xfs mounted at /mnt/k8s-disks/0, and containerd's, the kubelet's
 * and the pod logs' directories bind-mounted from it. The host init's mount lines.
 */
async function eksInstanceStoreRaid0(h: FakeHost): Promise<FakeMount[]> {
  await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
  await h.nvme({ ctrl: 2, minor: 4, model: INSTANCE_STORE, pci: "0000:00:1e.0" });
  await h.md("md127", 127, "raid0", ["nvme1n1", "nvme2n1"]);
  const array = {
    fsType: "xfs",
    source: "/dev/md127",
    device: "9:127",
    options: "rw,noatime",
    superOptions: "rw,attr2,inode64,logbufs=8,logbsize=32k,sunit=1024,swidth=2048,noquota",
  };
  return [
    { ...array, mountPoint: "/mnt/k8s-disks/0" },
    { ...array, mountPoint: "/var/lib/containerd", root: "/containerd" },
    { ...array, mountPoint: "/var/log/pods", root: "/pods" },
    { ...array, mountPoint: "/var/lib/kubelet", root: "/kubelet" },
  ];
}

/**
 * An EKS node with the instance-store RAID0 at /mnt/k8s-disks/0, and the DaemonSet's staging hostPath
 * left at /var/lib/coldstart: on the root EBS volume beside it (what placement.require auto refuses).
 */
export async function daemonSetOnRootVolumeBesideInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const raid = await eksInstanceStoreRaid0(h);
  return daemonSetView(
    h,
    {
      mountPoint: "/var/lib/coldstart",
      root: "/var/lib/coldstart",
      fsType: "ext4",
      source: "/dev/nvme0n1p1",
      device: "259:1",
      superOptions: "rw,discard,errors=remount-ro,commit=30",
    },
    raid,
  );
}

/**
 * The same node with deploy/components/instance-store: the staging hostPath /mnt/k8s-disks/0/coldstart,
 * a directory of the RAID0's xfs, at /var/lib/coldstart in the pod.
 */
export async function daemonSetOnEksInstanceStore(): Promise<FakeScenario> {
  const h = await FakeHost.create();
  const raid = await eksInstanceStoreRaid0(h);
  const [array] = raid as [FakeMount];
  return daemonSetView(h, { ...array, mountPoint: "/var/lib/coldstart", root: "/coldstart" }, raid);
}

/** Every named scenario, for tests that want to run a check over all of them. */
export const scenarios = {
  gdsReady,
  compatOnly,
  nvidiaFsMissing,
  iommuOn,
  onOverlay,
  onRootVolume,
  onTmpfs,
  ext4DataJournal,
  xfsInstanceStore,
  partitionedInstanceStore,
  lvmOverPartitions,
  btrfsInstanceStore,
  nfs4,
  escapedMountPoint,
  ebsDataVolume,
  onPremNvme,
  sataSsd,
  unknownDevice,
  daemonSetOnRootVolume,
  daemonSetOnInstanceStore,
  daemonSetOnRootVolumeBesideInstanceStore,
  daemonSetOnEksInstanceStore,
} satisfies Record<string, () => Promise<FakeScenario>>;
