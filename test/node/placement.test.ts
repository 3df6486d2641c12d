import { readFile, symlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  type DiskFacts,
  diskKind,
  type PlacementFacts,
  parseMountinfo,
  probePlacement,
} from "../../src/node/placement.js";
import * as hosts from "../support/fake-host.js";
import {
  btrfsInstanceStore,
  compatOnly,
  EBS,
  ebsDataVolume,
  ec2Node,
  escapedMountPoint,
  ext4DataJournal,
  FakeHost,
  type FakeScenario,
  gdsReady,
  INSTANCE_STORE,
  iommuOn,
  lvmOverPartitions,
  nfs4,
  nvidiaFsMissing,
  onOverlay,
  onPremNvme,
  onRootVolume,
  onTmpfs,
  partitionedInstanceStore,
  sataSsd,
  unknownDevice,
  xfsInstanceStore,
} from "../support/fake-host.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function probe(make: () => Promise<FakeScenario>): Promise<{ root: string; f: PlacementFacts }> {
  const s = await make();
  cleanups.push(s.cleanup);
  return { root: s.hostRoot, f: await probePlacement(s) };
}

async function host(): Promise<FakeHost> {
  const h = await FakeHost.create();
  cleanups.push(() => h.cleanup());
  return h;
}

const codes = (f: PlacementFacts) => ({
  warnings: f.warnings.map((w) => w.code),
  gdsBlockers: f.gdsBlockers.map((b) => b.code),
});
const instanceStore = (name: string): DiskFacts => ({
  name,
  nvme: true,
  model: INSTANCE_STORE,
  kind: "instance-store",
});
const rootEbs: DiskFacts = { name: "nvme0n1", nvme: true, model: EBS, kind: "ebs" };

describe("probePlacement: scenarios", () => {
  it("gdsReady: ext4 on md0 RAID0 of two instance-store disks, apart from the root EBS volume", async () => {
    const { root, f } = await probe(gdsReady);
    expect(f).toEqual({
      placement: "nvme-instance-store",
      path: `${root}/mnt/md0/coldstart`,
      mount: {
        mountPoint: `${root}/mnt/md0`,
        root: "/",
        fsType: "ext4",
        source: "/dev/md0",
        options: ["rw", "relatime"],
        superOptions: ["rw", "stripe=256"],
        device: "9:0",
      },
      chain: ["md0", "nvme1n1", "nvme2n1"],
      disks: [instanceStore("nvme1n1"), instanceStore("nvme2n1")],
      rootDisks: ["nvme0n1"],
      sharesRootVolume: false,
      instanceStore: {
        disks: [instanceStore("nvme1n1"), instanceStore("nvme2n1")],
        mounts: [
          { mountPoint: `${root}/mnt/md0`, fsType: "ext4", device: "md0", disks: ["nvme1n1", "nvme2n1"] },
        ],
        spare: ["nvme1n1", "nvme2n1"],
      },
      warnings: [],
      gdsBlockers: [],
      notes: [],
    });
  });

  it("compatOnly, nvidiaFsMissing and iommuOn stage on the same RAID0", async () => {
    for (const make of [compatOnly, nvidiaFsMissing, iommuOn]) {
      const { f } = await probe(make);
      expect([f.placement, f.chain, f.sharesRootVolume, codes(f)]).toEqual([
        "nvme-instance-store",
        ["md0", "nvme1n1", "nvme2n1"],
        false,
        { warnings: [], gdsBlockers: [] },
      ]);
    }
  });

  it("onOverlay: the container's writable layer, whose upperdir is on the root EBS volume", async () => {
    const { root, f } = await probe(onOverlay);
    expect(f.path).toBe(join(dirname(root), `${basename(root)}-ctr`, "models"));
    expect(f.mount?.mountPoint).toBe("/");
    expect(f.mount?.fsType).toBe("overlay");
    expect(f.placement).toBe("root-volume");
    expect(f.chain).toEqual(["nvme0n1p1", "nvme0n1"]);
    expect(f.disks).toEqual([rootEbs]);
    expect(f.rootDisks).toEqual(["nvme0n1"]);
    expect(f.sharesRootVolume).toBe(true);
    expect(codes(f)).toEqual({
      warnings: ["staging_on_overlayfs", "staging_on_root_volume", "staging_on_remote_disk"],
      gdsBlockers: ["fs_unsupported:overlay"],
    });
    expect(f.warnings[0]?.message).toContain(f.path);
  });

  it("onRootVolume: a plain directory on the root EBS partition", async () => {
    const { root, f } = await probe(onRootVolume);
    expect(f.path).toBe(`${root}/var/lib/coldstart`);
    expect(f.mount).toMatchObject({
      mountPoint: root,
      fsType: "ext4",
      source: "/dev/nvme0n1p1",
      device: "259:1",
    });
    expect(f.placement).toBe("root-volume");
    expect(f.chain).toEqual(["nvme0n1p1", "nvme0n1"]);
    expect(f.disks).toEqual([rootEbs]);
    expect(f.sharesRootVolume).toBe(true);
    expect(codes(f)).toEqual({
      warnings: ["staging_on_root_volume", "staging_on_remote_disk"],
      gdsBlockers: [],
    });
    expect(f.warnings[0]?.message).toContain("nvme0n1");
  });

  it("onTmpfs: RAM, no disk, not the root volume", async () => {
    const { root, f } = await probe(onTmpfs);
    expect(f.mount).toMatchObject({ mountPoint: `${root}/run`, fsType: "tmpfs" });
    expect([f.placement, f.chain, f.disks, f.rootDisks, f.sharesRootVolume]).toEqual([
      "tmpfs",
      [],
      [],
      ["nvme0n1"],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: ["staging_on_tmpfs"], gdsBlockers: ["fs_unsupported:tmpfs"] });
  });

  it("ext4DataJournal: instance store, but data=journal blocks GDS", async () => {
    const { f } = await probe(ext4DataJournal);
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual([
      "nvme-instance-store",
      ["nvme1n1"],
      [instanceStore("nvme1n1")],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: ["fs_unsupported:ext4-data=journal"] });
  });

  it("ext4 with data=writeback blocks GDS; data=ordered does not", async () => {
    for (const [data, blockers] of [
      ["writeback", ["fs_unsupported:ext4-data=writeback"]],
      ["ordered", []],
    ] as const) {
      const h = await host();
      const base = await ec2Node(h);
      await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
      await h.mountinfo([
        ...base,
        {
          mountPoint: h.path("mnt/nvme1"),
          fsType: "ext4",
          source: "/dev/nvme1n1",
          device: "259:3",
          superOptions: `rw,data=${data}`,
        },
      ]);
      const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("mnt/nvme1/x") });
      expect(codes(f).gdsBlockers).toEqual(blockers);
    }
  });

  it("xfsInstanceStore: a staging root that does not exist yet resolves under its mount", async () => {
    const { root, f } = await probe(xfsInstanceStore);
    expect(f.path).toBe(`${root}/mnt/local/coldstart/models`);
    expect(f.mount).toMatchObject({ mountPoint: `${root}/mnt/local`, fsType: "xfs", device: "259:3" });
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual([
      "nvme-instance-store",
      ["nvme1n1"],
      [instanceStore("nvme1n1")],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("partitionedInstanceStore: the partition maps to its disk", async () => {
    const { f } = await probe(partitionedInstanceStore);
    expect([f.placement, f.chain, f.disks]).toEqual([
      "nvme-instance-store",
      ["nvme1n1p1", "nvme1n1"],
      [instanceStore("nvme1n1")],
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("lvmOverPartitions: dm-0 members are partitions, each mapped to its disk", async () => {
    const { f } = await probe(lvmOverPartitions);
    expect([f.placement, f.chain, f.disks]).toEqual([
      "nvme-instance-store",
      ["dm-0", "nvme1n1p1", "nvme1n1", "nvme2n1p1", "nvme2n1"],
      [instanceStore("nvme1n1"), instanceStore("nvme2n1")],
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("btrfsInstanceStore: anonymous 0:45 device found by its /dev source; btrfs blocks GDS", async () => {
    const { f } = await probe(btrfsInstanceStore);
    expect(f.mount).toMatchObject({ fsType: "btrfs", device: "0:45", source: "/dev/nvme1n1" });
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual([
      "nvme-instance-store",
      ["nvme1n1"],
      [instanceStore("nvme1n1")],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: ["fs_unsupported:btrfs"] });
  });

  it("nfs4: network, no disk, not the root volume", async () => {
    const { f } = await probe(nfs4);
    expect(f.mount).toMatchObject({
      fsType: "nfs4",
      source: "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com:/",
    });
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual(["network", [], [], false]);
    expect(codes(f)).toEqual({ warnings: ["staging_on_network_fs"], gdsBlockers: ["fs_unsupported:nfs4"] });
  });

  it("escapedMountPoint: \\040 unescaped, the later mount on a point shadows the earlier, prefixes by component", async () => {
    const { root, f } = await probe(escapedMountPoint);
    expect(f.path).toBe(`${root}/mnt/fast disk/coldstart`);
    expect(f.mount).toMatchObject({ mountPoint: `${root}/mnt/fast disk`, fsType: "xfs", device: "259:3" });
    expect([f.placement, f.disks]).toEqual(["nvme-instance-store", [instanceStore("nvme1n1")]]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("ebsDataVolume: a second EBS volume is nvme-ebs, not the root volume", async () => {
    const { f } = await probe(ebsDataVolume);
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual([
      "nvme-ebs",
      ["nvme1n1"],
      [{ name: "nvme1n1", nvme: true, model: EBS, kind: "ebs" }],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: ["staging_on_remote_disk"], gdsBlockers: [] });
  });

  it("onPremNvme: an NVMe with no cloud model string is nvme-local", async () => {
    const { f } = await probe(onPremNvme);
    expect([f.placement, f.disks]).toEqual([
      "nvme-local",
      [{ name: "nvme1n1", nvme: true, model: "SAMSUNG MZQL27T6HBLA-00A07", kind: "nvme" }],
    ]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("sataSsd: sda1 → sda is non-nvme, warned and blocking GDS", async () => {
    const { f } = await probe(sataSsd);
    expect([f.placement, f.chain, f.disks, f.sharesRootVolume]).toEqual([
      "non-nvme",
      ["sda1", "sda"],
      [{ name: "sda", nvme: false, model: "SAMSUNG MZ7LH960", kind: "other" }],
      false,
    ]);
    expect(codes(f)).toEqual({ warnings: ["not_nvme"], gdsBlockers: ["not_nvme"] });
  });

  it("unknownDevice: no sysfs entry, noted; placement unknown, root sharing unknown", async () => {
    const { root, f } = await probe(unknownDevice);
    expect([f.placement, f.chain, f.disks, f.rootDisks, f.sharesRootVolume]).toEqual([
      "unknown",
      [],
      [],
      ["nvme0n1"],
      null,
    ]);
    expect(codes(f)).toEqual({ warnings: ["placement_unknown"], gdsBlockers: ["placement_unknown"] });
    expect(f.notes).toEqual([`no sysfs entry for 259:99 or /dev/root under ${root}/sys`]);
    expect(f.warnings[0]?.message).toContain("no sysfs entry for 259:99");
  });
});

describe("probePlacement: the DaemonSet's host view (proc and sys only)", () => {
  it("finds the host's root volume through the host init's mount table", async () => {
    const s = await hosts.daemonSetOnRootVolume();
    try {
      const f = await probePlacement(s);
      expect(f.placement).toBe("root-volume");
      expect(f.rootDisks).toEqual(["nvme0n1"]);
      expect(f.sharesRootVolume).toBe(true);
      expect(f.warnings.map((w) => w.code)).toEqual(["staging_on_root_volume", "staging_on_remote_disk"]);
    } finally {
      await s.cleanup();
    }
  });

  it("tells instance-store staging apart from the root volume without a bind of the host's /", async () => {
    const s = await hosts.daemonSetOnInstanceStore();
    try {
      const f = await probePlacement(s);
      expect(f.placement).toBe("nvme-instance-store");
      expect(f.chain).toEqual(["md0", "nvme1n1", "nvme2n1"]);
      expect(f.rootDisks).toEqual(["nvme0n1"]);
      expect(f.sharesRootVolume).toBe(false);
      expect(f.warnings).toEqual([]);
      expect(f.gdsBlockers).toEqual([]);
    } finally {
      await s.cleanup();
    }
  });
});

describe("probePlacement: the node's instance store (placement.require auto)", () => {
  const eksRaid0 = {
    mountPoint: "/mnt/k8s-disks/0",
    fsType: "xfs",
    device: "md127",
    disks: ["nvme1n1", "nvme2n1"],
  };

  it("the EKS AMI's RAID0 beside a staging root on the root volume: found, mounted whole, and warned about", async () => {
    const s = await hosts.daemonSetOnRootVolumeBesideInstanceStore();
    cleanups.push(s.cleanup);
    const f = await probePlacement(s);
    expect([f.placement, f.rootDisks, f.sharesRootVolume]).toEqual(["root-volume", ["nvme0n1"], true]);
    // The array's own mount, not the binds of /var/lib/kubelet, /var/lib/containerd, /var/log/pods.
    expect(f.instanceStore).toEqual({
      disks: [instanceStore("nvme1n1"), instanceStore("nvme2n1")],
      mounts: [eksRaid0],
      spare: ["nvme1n1", "nvme2n1"],
    });
    expect(codes(f).warnings).toEqual([
      "staging_on_root_volume",
      "instance_store_unused",
      "staging_on_remote_disk",
    ]);
    expect(f.warnings[1]?.message).toBe(
      `this node has local instance-store NVMe nvme1n1, nvme2n1 ("${INSTANCE_STORE}") mounted at /mnt/k8s-disks/0 ` +
        "(xfs on md127), and staging root /var/lib/coldstart is on the root volume (nvme0n1) instead. Point the " +
        "staging root at the instance-store mount: the DaemonSet's staging hostPath /mnt/k8s-disks/0/coldstart " +
        "(kustomize component deploy/components/instance-store).",
    );
    expect(f.notes).toEqual([]);
  });

  it("a staging root on that RAID0 (deploy/components/instance-store) is nvme-instance-store, without warnings", async () => {
    const s = await hosts.daemonSetOnEksInstanceStore();
    cleanups.push(s.cleanup);
    const f = await probePlacement(s);
    expect(f.placement).toBe("nvme-instance-store");
    expect(f.mount).toMatchObject({ mountPoint: "/var/lib/coldstart", root: "/coldstart", fsType: "xfs" });
    expect(f.chain).toEqual(["md127", "nvme1n1", "nvme2n1"]);
    expect(f.instanceStore.mounts).toEqual([eksRaid0]);
    expect(codes(f)).toEqual({ warnings: [], gdsBlockers: [] });
  });

  it("a node without instance storage has none: the root volume is only warned about", async () => {
    const s = await hosts.daemonSetOnRootVolume();
    cleanups.push(s.cleanup);
    const f = await probePlacement(s);
    expect(f.instanceStore).toEqual({ disks: [], mounts: [], spare: [] });
    expect(codes(f).warnings).toEqual(["staging_on_root_volume", "staging_on_remote_disk"]);
  });

  it("instance-store disks nothing mounts: the advice says how to mount them on EKS", async () => {
    const h = await host();
    const base = await ec2Node(h);
    await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0" });
    await h.mountinfo(base);
    await h.dir("var/lib/coldstart");
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("var/lib/coldstart") });
    expect(f.instanceStore).toEqual({ disks: [instanceStore("nvme1n1")], mounts: [], spare: ["nvme1n1"] });
    expect(f.warnings.find((w) => w.code === "instance_store_unused")?.message).toBe(
      `this node has local instance-store NVMe nvme1n1 ("${INSTANCE_STORE}") not mounted, and staging root ` +
        `${h.root}/var/lib/coldstart is on the root volume (nvme0n1) instead. Mount them (on EKS, ` +
        "instanceStorePolicy: RAID0 in the Karpenter EC2NodeClass, or nodeadm's localStorage strategy RAID0, " +
        "makes them one RAID0 at /mnt/k8s-disks/0) and point the staging root there: the DaemonSet's staging " +
        "hostPath /mnt/k8s-disks/0/coldstart (kustomize component deploy/components/instance-store).",
    );
  });

  it("an instance-store disk that holds the root volume itself is no spare: nothing better to point at", async () => {
    const h = await host();
    await h.nvme({
      ctrl: 0,
      minor: 0,
      model: INSTANCE_STORE,
      pci: "0000:00:04.0",
      partitions: [{ n: 1, minor: 1 }],
    });
    await h.mountinfo([{ mountPoint: h.root, fsType: "ext4", source: "/dev/nvme0n1p1", device: "259:1" }]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("var/lib/coldstart") });
    expect(f.placement).toBe("root-volume");
    expect(f.instanceStore.disks.map((d) => d.name)).toEqual(["nvme0n1"]);
    expect(f.instanceStore.spare).toEqual([]);
    expect(codes(f).warnings).toEqual(["staging_on_root_volume"]);
  });

  it("counts namespaces once: partitions and multipath paths (nvme1c1n1) are not disks; EBS is not instance store", async () => {
    const h = await host();
    const base = await ec2Node(h);
    await h.nvme({
      ctrl: 1,
      minor: 3,
      model: INSTANCE_STORE,
      pci: "0000:00:1f.0",
      partitions: [{ n: 1, minor: 5 }],
    });
    await h.nvme({ ctrl: 10, minor: 7, model: INSTANCE_STORE, pci: "0000:00:1c.0" });
    await h.nvme({ ctrl: 2, minor: 4, model: EBS, pci: "0000:00:1e.0" });
    await h.link("sys/class/block/nvme1c1n1", "sys/devices/pci0000:00/0000:00:1f.0/nvme/nvme1/nvme1n1");
    await h.mountinfo(base);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("var/lib/coldstart") });
    expect(f.instanceStore.disks.map((d) => d.name)).toEqual(["nvme1n1", "nvme10n1"]);
  });
});

describe("probePlacement: edge cases", () => {
  it("the fake tree pads model strings like sysfs; the probe trims them", async () => {
    const { root, f } = await probe(gdsReady);
    const raw = await readFile(`${root}/sys/class/block/nvme1n1/device/model`, "utf8");
    expect(raw).toBe(`${INSTANCE_STORE.padEnd(40)}\n`);
    expect(f.disks[0]?.model).toBe(INSTANCE_STORE);
  });

  it("a staging root under a symlink resolves through it to the mount it really lives on", async () => {
    const s = await gdsReady();
    cleanups.push(s.cleanup);
    await symlink("mnt/md0", `${s.hostRoot}/data`);
    const f = await probePlacement({ hostRoot: s.hostRoot, stagingRoot: `${s.hostRoot}/data/new/dir` });
    expect(f.path).toBe(`${s.hostRoot}/mnt/md0/new/dir`);
    expect(f.placement).toBe("nvme-instance-store");
  });

  it("another partition of the root disk shares the root volume though its device differs", async () => {
    const h = await host();
    await h.nvme({
      ctrl: 0,
      minor: 0,
      model: EBS,
      pci: "0000:00:04.0",
      partitions: [
        { n: 1, minor: 1 },
        { n: 3, minor: 3 },
      ],
    });
    const ext4 = { fsType: "ext4", source: "/dev/nvme0n1p1", device: "259:1" };
    await h.mountinfo([
      { ...ext4, mountPoint: h.root },
      { ...ext4, mountPoint: h.path("data"), source: "/dev/nvme0n1p3", device: "259:3" },
    ]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("data/coldstart") });
    expect([f.placement, f.chain, f.rootDisks, f.sharesRootVolume]).toEqual([
      "root-volume",
      ["nvme0n1p3", "nvme0n1"],
      ["nvme0n1"],
      true,
    ]);
  });

  it("a mount at /data does not hold /database", async () => {
    const h = await host();
    await h.nvme({ ctrl: 0, minor: 0, model: EBS, pci: "0000:00:04.0", partitions: [{ n: 1, minor: 1 }] });
    await h.mountinfo([
      { mountPoint: h.root, fsType: "ext4", source: "/dev/nvme0n1p1", device: "259:1" },
      { mountPoint: h.path("data"), fsType: "tmpfs", source: "tmpfs", device: "0:40" },
    ]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("database/x") });
    expect(f.mount?.mountPoint).toBe(h.root);
    expect(f.placement).toBe("root-volume");
  });

  it("an md cycle in sysfs ends with a note instead of looping", async () => {
    const h = await host();
    await h.md("md0", 0, "raid0", []);
    await h.md("md1", 1, "raid0", ["md0"]);
    await h.link("sys/devices/virtual/block/md0/slaves/md1", "sys/devices/virtual/block/md1");
    await h.mountinfo([{ mountPoint: h.path("mnt"), fsType: "xfs", source: "/dev/md1", device: "9:1" }]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("mnt/x") });
    expect([f.placement, f.chain, f.disks]).toEqual(["unknown", ["md1", "md0"], []]);
    expect(f.notes).toContain("block device cycle at md1");
  });

  it("two partitions of one disk in one array: the disk is listed once, and that is no cycle", async () => {
    const h = await host();
    const partitions = [
      { n: 1, minor: 5 },
      { n: 2, minor: 6 },
    ];
    await h.nvme({ ctrl: 1, minor: 3, model: INSTANCE_STORE, pci: "0000:00:1f.0", partitions });
    await h.md("md0", 0, "raid0", ["nvme1n1p1", "nvme1n1p2"]);
    await h.mountinfo([{ mountPoint: h.path("mnt"), fsType: "xfs", source: "/dev/md0", device: "9:0" }]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("mnt/x") });
    expect([f.placement, f.chain, f.disks, f.notes]).toEqual([
      "nvme-instance-store",
      ["md0", "nvme1n1p1", "nvme1n1", "nvme1n1p2"],
      [instanceStore("nvme1n1")],
      [`no mount holds ${h.root}`],
    ]);
  });

  it("overlay without an upperdir: placement unknown, still an overlay blocker", async () => {
    const h = await host();
    await h.mountinfo([
      {
        mountPoint: h.root,
        fsType: "overlay",
        source: "overlay",
        device: "0:50",
        superOptions: "ro,lowerdir=/a:/b",
      },
    ]);
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("x") });
    expect(f.placement).toBe("unknown");
    expect(codes(f)).toEqual({
      warnings: ["staging_on_overlayfs", "placement_unknown"],
      gdsBlockers: ["fs_unsupported:overlay", "placement_unknown"],
    });
    expect(f.notes).toContain(`overlay at ${h.root}: no upperdir`);
  });

  it("falls back to this process's /proc/self/mountinfo when the host tree has none", async () => {
    const h = await host();
    const f = await probePlacement({ hostRoot: h.root, stagingRoot: h.path("x") });
    // The usual case in a DaemonSet, which mounts only what the probes read: no note about it.
    expect(f.notes.join("\n")).not.toContain("mountinfo");
    expect(f.mount).not.toBeNull();
  });

  it("fuse filesystems count as network, fuseblk does not", async () => {
    const h = await host();
    await h.mountinfo([
      { mountPoint: h.path("s3"), fsType: "fuse", source: "mountpoint-s3", device: "0:70" },
      { mountPoint: h.path("gcs"), fsType: "fuse.gcsfuse", source: "models", device: "0:71" },
      { mountPoint: h.path("ntfs"), fsType: "fuseblk", source: "/dev/sdb1", device: "0:72" },
    ]);
    const at = async (p: string) =>
      (await probePlacement({ hostRoot: h.root, stagingRoot: h.path(p) })).placement;
    expect([await at("s3/m"), await at("gcs/m"), await at("ntfs/m")]).toEqual([
      "network",
      "network",
      "unknown",
    ]);
  });
});

describe("parseMountinfo", () => {
  it("reads optional fields, unescapes \\040 \\011 \\012 \\134, and skips malformed lines", () => {
    const text = [
      "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue",
      "37 35 0:40 / /x\\011y\\012z\\134w rw - tmpfs tmp\\040fs rw",
      "garbage line",
      "38 35 0:41 / /no-separator rw tmpfs tmpfs rw",
      "",
    ].join("\n");
    expect(parseMountinfo(text)).toEqual([
      {
        mountPoint: "/mnt/a b",
        root: "/mnt1",
        fsType: "ext3",
        source: "/dev/root",
        options: ["rw", "noatime"],
        superOptions: ["rw", "errors=continue"],
        device: "98:0",
      },
      {
        mountPoint: "/x\ty\nz\\w",
        root: "/",
        fsType: "tmpfs",
        source: "tmp fs",
        options: ["rw"],
        superOptions: ["rw"],
        device: "0:40",
      },
    ]);
  });
});

describe("diskKind", () => {
  it("maps cloud model strings to kinds", () => {
    expect([
      diskKind("nvme1n1", "Amazon EC2 NVMe Instance Storage"),
      diskKind("nvme0n1", "Amazon Elastic Block Store"),
      diskKind("nvme1n1", "nvme_card"),
      diskKind("nvme0n1", "nvme_card-pd"),
      diskKind("nvme1n1", "Microsoft NVMe Direct Disk v2"),
      diskKind("nvme1n1", "SAMSUNG MZQL27T6HBLA-00A07"),
      diskKind("nvme1n1", null),
      diskKind("sda", "Amazon Elastic Block Store"),
    ]).toEqual(["instance-store", "ebs", "instance-store", "ebs", "instance-store", "nvme", "nvme", "other"]);
  });
});
