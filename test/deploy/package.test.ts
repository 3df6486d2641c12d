/**
 * The packaged entrypoint, without an image engine: `npm pack` the package, unpack it, put the built
 * addon where the Dockerfile puts it, and run `coldstart` from there, through its shebang. Proves the
 * published file list is complete and the CLI starts from an installed copy, not only from the repo.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { builtAddon } from "../support/native-doubles.js";

const run = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");
let dir: string;
let pkg: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "cs-pack-"));
  const { stdout } = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], {
    cwd: root,
  });
  const [packed] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[];
  if (!packed) throw new Error("npm pack printed nothing");
  await run("tar", ["xzf", join(dir, packed.filename), "-C", dir]);
  pkg = join(dir, "package");
  // What `npm install` would provide, and the addon where the image's build stage leaves it.
  await symlink(join(root, "node_modules"), join(pkg, "node_modules"));
  await mkdir(join(pkg, "build/Release"), { recursive: true });
  await copyFile(builtAddon(), join(pkg, "build/Release/coldstart_native.node"));
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("the packaged coldstart", () => {
  it("starts from the unpacked package through its shebang and reports the package's version", async () => {
    const { version } = JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { version: string };
    const { stdout } = await run(join(pkg, "bin/coldstart.js"), ["--version"]);
    expect(stdout.trim()).toBe(version);
  });

  it("runs doctor --json from the package with the addon it ships", async () => {
    const { stdout } = await run(
      join(pkg, "bin/coldstart.js"),
      ["doctor", "--json", "--root", join(dir, "root")],
      {
        env: { PATH: process.env.PATH ?? "" },
      },
    );
    const report = JSON.parse(stdout);
    expect(report.facts.native).toEqual({
      available: true,
      path: join(pkg, "build/Release/coldstart_native.node"),
      reason: null,
    });
    expect(report.checks.map((c: { id: string }) => c.id)).toContain("gds.verdict");
  });

  it("every path the Dockerfile copies from the context exists", async () => {
    const dockerfile = await readFile(join(root, "Dockerfile"), "utf8");
    const sources = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) =>
      (m[1] as string).split(/\s+/),
    );
    expect(sources.length).toBeGreaterThan(5);
    for (const s of sources)
      await expect(
        readFile(join(root, s)).catch((e) => (e.code === "EISDIR" ? "dir" : Promise.reject(e))),
      ).resolves.toBeDefined();
    const ignored = (await readFile(join(root, ".dockerignore"), "utf8")).split("\n").map((l) => l.trim());
    for (const s of sources)
      expect(ignored, `${s} is excluded from the build context`).not.toContain(s.replace(/\/$/, ""));
  });
});
