import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { RootLayout } from "../../src/store/root-layout.js";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "cs-layout-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("the staging root's layout", () => {
  it("puts every directory where the docs say, models by their id's segments", () => {
    const l = new RootLayout("/r");
    expect([l.models, l.compileCaches, l.registryFile, l.compileCacheRecords, l.compileCacheTmp]).toEqual([
      "/r/models",
      "/r/compile-cache",
      "/r/state/models.json",
      "/r/state/compile-caches",
      "/r/tmp/compile-cache",
    ]);
    expect(l.modelSegments("org/name")).toEqual(["models", "org", "name"]);
    expect([l.trash("models"), l.trash("compile-cache")]).toEqual([
      "/r/trash/models",
      "/r/trash/compile-cache",
    ]);
  });

  it("each manager empties only its own trash; the models' also takes what older versions left loose", async () => {
    const l = new RootLayout(root);
    for (const d of [
      join(l.trash("models"), "a"),
      join(l.trash("compile-cache"), "b"),
      join(root, "trash", "old-uuid"),
    ])
      await mkdir(d, { recursive: true });
    await writeFile(join(root, "trash", "cc-old"), "x");
    await l.emptyTrash("compile-cache");
    expect((await readdir(join(root, "trash"))).sort()).toEqual(["cc-old", "models", "old-uuid"]);
    await mkdir(join(l.trash("compile-cache"), "c"), { recursive: true });
    await l.emptyTrash("models");
    expect(await readdir(join(root, "trash"))).toEqual(["compile-cache"]);
    expect(await readdir(l.trash("compile-cache"))).toEqual(["c"]);
  });
});
