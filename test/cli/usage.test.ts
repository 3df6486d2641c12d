/**
 * Usage errors of every subcommand, through the real `coldstart` child process. Regression: an
 * unknown option or a missing required option of a subcommand exited 1 (commander's own exit, not
 * ours) with commander's two-line message, while docs/cli.md promises exit 2 and one line.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { allCommands, buildProgram, commandPath } from "../../src/cli/main.js";
import { coldstart, finish } from "../support/processes.js";

// Nothing here reaches S3 or a daemon: every case fails while the command line is parsed or checked.
const NO_S3 = { endpoint: "http://127.0.0.1:1", accessKeyId: "x", secretAccessKey: "x", region: "us-east-1" };
const run = (args: string[], env: Record<string, string> = {}) => finish(coldstart(args, NO_S3, env));

/** The one stderr line of a usage error: `coldstart: CS_CONFIG_INVALID: <what>`. */
const USAGE_LINE = /^coldstart: CS_CONFIG_INVALID: [^\n]+\n$/;

describe("coldstart usage errors exit 2 with one line", () => {
  it.each([
    [
      "pull: unknown option, with a suggestion",
      ["pull", "--concurency", "4", "s3://bucket/p/", "--dest", "/tmp/d"],
      /unknown option '--concurency' \(did you mean --concurrency\?\); see coldstart pull --help\n$/,
    ],
    [
      "pull: missing required option",
      ["pull", "s3://bucket/p/"],
      /required option '--dest <dir>' not specified/,
    ],
    [
      "pull: option without its value",
      ["pull", "s3://bucket/p/", "--dest"],
      /option '--dest <dir>' argument missing/,
    ],
    [
      "pull: excess arguments",
      ["pull", "s3://bucket/a/", "s3://bucket/b/", "--dest", "/tmp/d"],
      /too many arguments for 'pull'/,
    ],
    ["pull: missing argument", ["pull", "--dest", "/tmp/d"], /missing required argument 'source'/],
    [
      "pull: invalid option value, naming the flag and the value",
      ["pull", "s3://bucket/p/", "--dest", "/tmp/d", "--concurrency", "lots"],
      /download\.concurrency \(from flag --concurrency\) must be a whole number, got "lots"\n$/,
    ],
    ["unknown command, with a suggestion", ["pul"], /unknown command 'pul' \(did you mean pull\?\)/],
    ["unknown command", ["frobnicate"], /unknown command 'frobnicate'; see coldstart --help\n$/],
    ["daemon: unknown option", ["daemon", "--bogus"], /unknown option '--bogus'/],
    [
      "daemon: option without its value",
      ["daemon", "--listen"],
      /option '--listen <host:port>' argument missing/,
    ],
    ["daemon: excess arguments", ["daemon", "extra"], /too many arguments for 'daemon'/],
    ["wait: missing argument", ["wait"], /missing required argument 'id'/],
    [
      "wait: invalid option value",
      ["wait", "org/model", "--timeout", "soon"],
      /wait\.timeoutMs \(from flag --timeout\) must be a duration/,
    ],
    ["doctor: unknown option, with a suggestion", ["doctor", "--jsno"], /\(did you mean --json\?\)/],
    [
      "doctor: invalid option value",
      ["doctor", "--gds", "maybe"],
      /gds\.mode \(from flag --gds\) must be one of auto, on, off, got "maybe"\n$/,
    ],
    [
      "cache key: unknown option, with a suggestion",
      ["cache", "key", "--torhc", "2.5.1"],
      /unknown option '--torhc' \(did you mean --torch\?\); see coldstart cache key --help\n$/,
    ],
    ["cache: unknown command", ["cache", "bogus"], /unknown command 'bogus'/],
    ["cache publish: missing argument", ["cache", "publish"], /missing required argument 'key'/],
    ["cache ls: excess arguments", ["cache", "ls", "extra"], /too many arguments for 'ls'/],
    ["cache prune: unknown option", ["cache", "prune", "--dry"], /unknown option '--dry'/],
  ])("%s", async (_name, args, message) => {
    const out = await run(args);
    expect(out.code, out.stderr).toBe(2);
    expect(out.stderr).toMatch(USAGE_LINE);
    expect(out.stderr).toMatch(message);
    expect(out.stdout).toBe("");
  });

  it("with --json also ends stdout with the error as JSON", async () => {
    const out = await run(["doctor", "--json", "--bogus"]);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(USAGE_LINE);
    expect(JSON.parse(out.stdout)).toEqual({
      error: { code: "CS_CONFIG_INVALID", message: expect.stringContaining("unknown option '--bogus'") },
    });
  });

  it("a misspelled COLDSTART_ variable gets a did-you-mean", async () => {
    const out = await run(["doctor"], { COLDSTART_DOWNLOAD_CONCURENCY: "4" });
    expect(out.code).toBe(2);
    expect(out.stderr).toBe(
      "coldstart: CS_CONFIG_INVALID: unknown environment variable COLDSTART_DOWNLOAD_CONCURENCY (did you mean COLDSTART_CONCURRENCY?)\n",
    );
  });

  it("no command, or a command group without its subcommand: the help on stderr, exit 2", async () => {
    for (const args of [[], ["cache"]]) {
      const out = await run(args);
      expect(out.code, args.join(" ")).toBe(2);
      expect(out.stderr).toMatch(/^Usage: coldstart/);
      expect(out.stdout).toBe("");
    }
  });

  it("--help and --version exit 0 on stdout", async () => {
    for (const args of [["--help"], ["--version"], ["pull", "--help"], ["cache", "key", "--help"]]) {
      const out = await run(args);
      expect(out.code, args.join(" ")).toBe(0);
      expect(out.stderr).toBe("");
      expect(out.stdout).not.toBe("");
    }
  });
});

describe("docs/cli.md", () => {
  it("states the exit codes of every command", async () => {
    const doc = await readFile(resolve(import.meta.dirname, "../../docs/cli.md"), "utf8");
    const section = doc.split("\n## Exit codes of every command\n")[1]?.split("\n## ")[0] ?? "";
    expect(section).toMatch(/exits 0 on success and 2 for a usage error/);
    const leaves = allCommands(buildProgram(() => {}))
      .filter((c) => c.commands.length === 0)
      .map(commandPath);
    expect(leaves).toHaveLength(8);
    for (const path of leaves) expect(section, path).toContain(`\n- \`${path}\`: `);
  });
});
