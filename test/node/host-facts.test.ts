import { afterEach, describe, expect, it } from "vitest";
import { readCufileJson, readIommu, readNvidiaFs } from "../../src/node/host-facts.js";
import {
  compatOnly,
  cufileJsonText,
  FakeHost,
  type FakeScenario,
  gdsReady,
  iommuOn,
  nvidiaFsMissing,
} from "../support/fake-host.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function use(make: () => Promise<FakeScenario>): Promise<FakeScenario> {
  const s = await make();
  cleanups.push(s.cleanup);
  return s;
}

async function host(): Promise<FakeHost> {
  const h = await FakeHost.create();
  cleanups.push(() => h.cleanup());
  return h;
}

const GDS_READY_KEYS = {
  "properties.max_direct_io_size_kb": 16384,
  "properties.max_device_cache_size_kb": 131072,
  "properties.use_poll_mode": false,
  "properties.poll_mode_max_size_kb": 4,
  "properties.rdma_dev_addr_list.length": 0,
  "fs.generic.posix_unaligned_writes": false,
  "execution.parallel_io": true,
  "logging.level": "ERROR",
};

describe("readNvidiaFs", () => {
  it("gdsReady: module loaded, version 2.17, devcount 2", async () => {
    const s = await use(gdsReady);
    expect(await readNvidiaFs(s.hostRoot)).toEqual({
      loaded: true,
      version: { major: 2, minor: 17 },
      devcount: 2,
      notes: [],
    });
  });

  it("compatOnly and nvidiaFsMissing: not loaded, no proc/driver/nvidia-fs", async () => {
    for (const make of [compatOnly, nvidiaFsMissing]) {
      const s = await use(make);
      expect(await readNvidiaFs(s.hostRoot)).toEqual({
        loaded: false,
        version: null,
        devcount: null,
        notes: ["proc/driver/nvidia-fs/version: ENOENT", "proc/driver/nvidia-fs/devcount: ENOENT"],
      });
    }
  });

  it("an empty host: everything absent, each file noted", async () => {
    const h = await host();
    expect(await readNvidiaFs(h.root)).toEqual({
      loaded: false,
      version: null,
      devcount: null,
      notes: [
        "proc/modules: ENOENT",
        "proc/driver/nvidia-fs/version: ENOENT",
        "proc/driver/nvidia-fs/devcount: ENOENT",
      ],
    });
  });

  it("matches the module name exactly, not as a prefix", async () => {
    const h = await host();
    await h.modules(["nvidia_fs_shim", "nvidia"]);
    expect((await readNvidiaFs(h.root)).loaded).toBe(false);
  });

  it("tolerates extra lines and a patch level in the version file", async () => {
    const h = await host();
    await h.modules(["nvidia_fs"]);
    await h.file("proc/driver/nvidia-fs/version", "GDS Version: 1.13.1.3\nversion: 2.26.6\nbuild: abc\n");
    await h.file("proc/driver/nvidia-fs/devcount", " 8 \n");
    const f = await readNvidiaFs(h.root);
    expect(f).toEqual({ loaded: true, version: { major: 2, minor: 26 }, devcount: 8, notes: [] });
  });

  it("unparseable version and devcount are null with a note", async () => {
    const h = await host();
    await h.modules(["nvidia_fs"]);
    await h.file("proc/driver/nvidia-fs/version", "version: unknown\n");
    await h.file("proc/driver/nvidia-fs/devcount", "two\n");
    expect(await readNvidiaFs(h.root)).toEqual({
      loaded: true,
      version: null,
      devcount: null,
      notes: [
        'proc/driver/nvidia-fs/version: no "version: <major>.<minor>" line',
        'proc/driver/nvidia-fs/devcount: not an integer: "two"',
      ],
    });
  });
});

describe("readCufileJson", () => {
  it("gdsReady: reads /etc/cufile.json with comments and trailing commas; allow_compat_mode false", async () => {
    const s = await use(gdsReady);
    expect(await readCufileJson(s.hostRoot)).toEqual({
      path: `${s.hostRoot}/etc/cufile.json`,
      found: true,
      allowCompatMode: false,
      forceCompatMode: false,
      keys: GDS_READY_KEYS,
      error: null,
      notes: [],
    });
  });

  it("compatOnly: allow_compat_mode true; nvidiaFsMissing: false", async () => {
    const compat = await use(compatOnly);
    expect((await readCufileJson(compat.hostRoot)).allowCompatMode).toBe(true);
    const missing = await use(nvidiaFsMissing);
    expect((await readCufileJson(missing.hostRoot)).allowCompatMode).toBe(false);
  });

  it("an explicit path wins over <hostRoot>/etc/cufile.json; absent keys take the library defaults", async () => {
    const s = await use(gdsReady);
    const h = await host();
    await h.file(
      "opt/app/cufile.json",
      cufileJsonText({
        extraProperties: '        "force_compat_mode": true,\n        "use_pci_p2pdma": true,\n',
      }),
    );
    const f = await readCufileJson(s.hostRoot, h.path("opt/app/cufile.json"));
    expect(f).toEqual({
      path: h.path("opt/app/cufile.json"),
      found: true,
      allowCompatMode: true,
      forceCompatMode: true,
      keys: { ...GDS_READY_KEYS, "properties.use_pci_p2pdma": true },
      error: null,
      notes: [],
    });
  });

  it("a missing file: not found, library defaults, the path tried in notes", async () => {
    const h = await host();
    expect(await readCufileJson(h.root)).toEqual({
      path: null,
      found: false,
      allowCompatMode: true,
      forceCompatMode: false,
      keys: {},
      error: null,
      notes: [`${h.root}/etc/cufile.json: ENOENT`],
    });
  });

  it("a missing explicit path does not fall back to /etc/cufile.json", async () => {
    const s = await use(gdsReady);
    const f = await readCufileJson(s.hostRoot, `${s.hostRoot}/nowhere/cufile.json`);
    expect(f.found).toBe(false);
    expect(f.allowCompatMode).toBe(true);
    expect(f.notes).toEqual([`${s.hostRoot}/nowhere/cufile.json: ENOENT`]);
  });

  it("a broken file: error set with the position, defaults kept even where the half-parse saw values", async () => {
    const h = await host();
    await h.file("etc/cufile.json", '{\n  "properties": { "allow_compat_mode": false }\n');
    expect(await readCufileJson(h.root)).toEqual({
      path: h.path("etc/cufile.json"),
      found: true,
      allowCompatMode: true,
      forceCompatMode: false,
      keys: {},
      error: "CloseBraceExpected at line 3, column 1",
      notes: [],
    });
  });

  it("a top level that is not an object is an error", async () => {
    const h = await host();
    await h.file("etc/cufile.json", "[1, 2]\n");
    expect((await readCufileJson(h.root)).error).toBe("top level is not a JSON object");
  });

  it("a compat flag of the wrong type is ignored with a note", async () => {
    const h = await host();
    await h.file(
      "etc/cufile.json",
      '{ "properties": { "allow_compat_mode": "false", "force_compat_mode": 1 } }',
    );
    const f = await readCufileJson(h.root);
    expect(f.allowCompatMode).toBe(true);
    expect(f.forceCompatMode).toBe(false);
    expect(f.notes).toEqual([
      "properties.allow_compat_mode is not a boolean; ignored",
      "properties.force_compat_mode is not a boolean; ignored",
    ]);
  });
});

describe("readIommu", () => {
  it("gdsReady: no token, empty sys/class/iommu → off", async () => {
    const s = await use(gdsReady);
    expect(await readIommu(s.hostRoot)).toEqual({
      enabled: false,
      passthrough: false,
      cmdline: [],
      units: [],
      notes: [],
    });
  });

  it("iommuOn: intel_iommu=on with dmar0 and dmar1 → enabled", async () => {
    const s = await use(iommuOn);
    expect(await readIommu(s.hostRoot)).toEqual({
      enabled: true,
      passthrough: false,
      cmdline: ["intel_iommu=on"],
      units: ["dmar0", "dmar1"],
      notes: [],
    });
  });

  async function withCmdline(cmdline: string, units: string[]): Promise<string> {
    const h = await host();
    await h.file("proc/cmdline", `BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p1 ro ${cmdline}\n`);
    await h.iommuUnits(units);
    return h.root;
  }

  it("iommu=pt beats intel_iommu=on: passthrough, not enabled", async () => {
    const root = await withCmdline("intel_iommu=on iommu=pt", ["dmar0"]);
    expect(await readIommu(root)).toMatchObject({
      enabled: false,
      passthrough: true,
      cmdline: ["iommu=pt"],
      units: ["dmar0"],
    });
  });

  it("iommu.passthrough=1 is passthrough", async () => {
    const root = await withCmdline("iommu.passthrough=1", ["dmar0"]);
    expect(await readIommu(root)).toMatchObject({
      enabled: false,
      passthrough: true,
      cmdline: ["iommu.passthrough=1"],
    });
  });

  it("intel_iommu=off, amd_iommu=off and iommu=off turn it off even with units", async () => {
    for (const token of ["intel_iommu=off", "amd_iommu=off", "iommu=off"]) {
      const root = await withCmdline(token, ["dmar0"]);
      expect(await readIommu(root)).toMatchObject({ enabled: false, passthrough: false, cmdline: [token] });
    }
  });

  it("the last value of a parameter wins", async () => {
    const root = await withCmdline("intel_iommu=on intel_iommu=off", ["dmar0"]);
    expect(await readIommu(root)).toMatchObject({ enabled: false, cmdline: ["intel_iommu=off"] });
  });

  it("iommu=force and amd_iommu=on enable it without units", async () => {
    for (const token of ["iommu=force", "amd_iommu=on"]) {
      const root = await withCmdline(token, []);
      expect(await readIommu(root)).toMatchObject({ enabled: true, cmdline: [token], units: [] });
    }
  });

  it("units and no token: enabled, unless every IOMMU group is an identity (passthrough) group", async () => {
    const root = await withCmdline("quiet", ["dmar0"]);
    expect(await readIommu(root)).toMatchObject({ enabled: true, passthrough: false, cmdline: [] });

    const h = await host();
    await h.file("proc/cmdline", "quiet\n");
    await h.iommuUnits(["dmar0"]);
    await h.file("sys/kernel/iommu_groups/0/type", "identity\n");
    await h.file("sys/kernel/iommu_groups/1/type", "identity\n");
    expect(await readIommu(h.root)).toEqual({
      enabled: false,
      passthrough: true,
      cmdline: [],
      units: ["dmar0"],
      notes: ["all 2 IOMMU groups are of type identity (passthrough by kernel default)"],
    });
    await h.file("sys/kernel/iommu_groups/2/type", "DMA-FQ\n");
    expect(await readIommu(h.root)).toMatchObject({ enabled: true, passthrough: false });
  });

  it("sysfs without an iommu class means no IOMMU driver: off, no note", async () => {
    const h = await host();
    await h.file("proc/cmdline", "quiet\n");
    await h.dir("sys/class/block");
    expect(await readIommu(h.root)).toEqual({
      enabled: false,
      passthrough: false,
      cmdline: [],
      units: [],
      notes: [],
    });
  });

  it("only the command line readable: decides from it, notes sysfs", async () => {
    const h = await host();
    await h.file("proc/cmdline", "intel_iommu=on\n");
    expect(await readIommu(h.root)).toEqual({
      enabled: true,
      passthrough: false,
      cmdline: ["intel_iommu=on"],
      units: [],
      notes: ["sys/class/iommu: ENOENT"],
    });
  });

  it("neither file readable: unknown (null)", async () => {
    const h = await host();
    expect(await readIommu(h.root)).toEqual({
      enabled: null,
      passthrough: false,
      cmdline: [],
      units: [],
      notes: ["proc/cmdline: ENOENT", "sys/class/iommu: ENOENT"],
    });
  });
});
