import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { renderOptionsReference } from "../../src/config/docs.js";
import { listOptions, loadConfig } from "../../src/config/load.js";
import { ColdstartError } from "../../src/errors.js";

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof ColdstartError ? `${e.code}: ${e.message}` : String(e);
  }
  return undefined;
}

describe("config", () => {
  it("has sane defaults and freezes the result", () => {
    const c = loadConfig({ env: {} });
    expect(c.download.partSizeBytes).toBe(8 * 1024 * 1024);
    expect(c.download.concurrency).toBe(32);
    expect(Object.isFrozen(c.download)).toBe(true);
  });

  it("takes flag over env over default, and parses sizes with units", () => {
    const env = { COLDSTART_PART_SIZE: "16MiB", COLDSTART_CONCURRENCY: "8" };
    const c = loadConfig({ env, flags: new Map([["download.concurrency", "12"]]) });
    expect(c.download.partSizeBytes).toBe(16 * 1024 * 1024);
    expect(c.download.concurrency).toBe(12);
  });

  it("honours AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL", () => {
    const c = loadConfig({ env: { AWS_ENDPOINT_URL: "http://a:1", AWS_ENDPOINT_URL_S3: "http://b:2" } });
    expect(c.s3.endpoint).toBe("http://b:2");
  });

  it("splits list options from env and collects repeatable flags", () => {
    const c = loadConfig({
      env: { COLDSTART_INCLUDE: "*.json, *.safetensors" },
      flags: new Map([["download.exclude", ["a/**", "b/**"]]]),
    });
    expect(c.download.include).toEqual(["*.json", "*.safetensors"]);
    expect(c.download.exclude).toEqual(["a/**", "b/**"]);
  });

  it("names the option, the source and the value in errors", () => {
    expect(codeOf(() => loadConfig({ flags: new Map([["download.partSizeBytes", "1KiB"]]) }))).toBe(
      'CS_CONFIG_INVALID: download.partSizeBytes (from flag --part-size) must be at least 1048576 (1MiB), got "1KiB"',
    );
    expect(codeOf(() => loadConfig({ env: { COLDSTART_CONCURRENCY: "0" } }))).toMatch(
      /CS_CONFIG_INVALID: download\.concurrency \(from env COLDSTART_CONCURRENCY\)/,
    );
    expect(codeOf(() => loadConfig({ env: { COLDSTART_S3_ENDPOINT: "ftp://x" } }))).toMatch(/s3\.endpoint/);
    expect(codeOf(() => loadConfig({ env: { COLDSTART_PART_SIZE: "lots" } }))).toMatch(/byte size/);
  });

  it("says in words what a value must be, and gives the value once", () => {
    // Regression: "Invalid input: expected number, received NaN" for --concurrency lots, and
    // "…, got "8XB"; got "8XB"" for --part-size 8XB.
    const flag = (name: string, value: unknown) =>
      codeOf(() => loadConfig({ flags: new Map([[name, value]]) }));
    expect(flag("download.concurrency", "lots")).toBe(
      'CS_CONFIG_INVALID: download.concurrency (from flag --concurrency) must be a whole number, got "lots"',
    );
    expect(flag("download.concurrency", "2.5")).toMatch(/must be a whole number, got "2.5"$/);
    expect(flag("download.concurrency", "0")).toMatch(
      /\(from flag --concurrency\) must be at least 1, got "0"$/,
    );
    expect(flag("download.partSizeBytes", "8XB")).toBe(
      'CS_CONFIG_INVALID: download.partSizeBytes (from flag --part-size) must be a byte size like 8MiB or 8388608, got "8XB"',
    );
    expect(codeOf(() => loadConfig({ env: { COLDSTART_GDS_MODE: "maybe" } }))).toBe(
      'CS_CONFIG_INVALID: gds.mode (from env COLDSTART_GDS_MODE) must be one of auto, on, off, got "maybe"',
    );
  });

  it("every option's refusal reads '<option> (from <source>) must …, got <value>', got once", () => {
    const bad = ["lots", "", "-1", "1.5", "99999999999999999999", "x y", "ftp://x", "8XB"];
    let refusals = 0;
    for (const { name, spec } of listOptions()) {
      for (const value of [...bad, ["ftp://x", "lots"]]) {
        const message = codeOf(() => loadConfig({ flags: new Map([[name, value]]) }));
        if (message === undefined) continue;
        refusals++;
        const source = spec.flag ? `flag ${spec.flag.split(" ")[0]}` : "flag";
        expect(message).toBe(
          `CS_CONFIG_INVALID: ${name} (from ${source}) ${message.split(`(from ${source}) `)[1]}`,
        );
        expect(message, message).toMatch(/\) (each entry )?must [^;]*[^;,], got .+$/);
        expect(message.split(", got ").length, message).toBe(2);
      }
    }
    expect(refusals).toBeGreaterThan(100);
  });

  it("refuses unknown COLDSTART_ variables", () => {
    expect(codeOf(() => loadConfig({ env: { COLDSTART_PARTSIZE: "8MiB" } }))).toMatch(
      /CS_CONFIG_INVALID: unknown environment variable COLDSTART_PARTSIZE/,
    );
  });

  it("suggests the variable a misspelled one was meant to be", () => {
    const unknown = (name: string) => codeOf(() => loadConfig({ env: { [name]: "4" } }));
    expect(unknown("COLDSTART_CONCURENCY")).toBe(
      "CS_CONFIG_INVALID: unknown environment variable COLDSTART_CONCURENCY (did you mean COLDSTART_CONCURRENCY?)",
    );
    // Spelled after the option's name (download.concurrency) rather than its variable.
    expect(unknown("COLDSTART_DOWNLOAD_CONCURENCY")).toMatch(/\(did you mean COLDSTART_CONCURRENCY\?\)$/);
    expect(unknown("COLDSTART_PART_SIZE_BYTES")).toMatch(/\(did you mean COLDSTART_PART_SIZE\?\)$/);
    expect(unknown("COLDSTART_LOGLEVEL")).toMatch(/\(did you mean COLDSTART_LOG_LEVEL\?\)$/);
    expect(unknown("COLDSTART_WHATEVER_ELSE")).toBe(
      "CS_CONFIG_INVALID: unknown environment variable COLDSTART_WHATEVER_ELSE",
    );
  });

  it("says where logs go as the commands do: the daemon's on stdout, pull's on stderr", () => {
    // Regression: docs/config.md (generated from this help) said "JSON logs on stderr" for all.
    const help = listOptions().find((o) => o.name === "log.level")?.spec.help;
    expect(help).toMatch(/daemon[^.;]* stdout/);
    expect(help).toMatch(/pull[^.;]* stderr/);
  });

  it("ignores the kubelet's service-link variables (a Service named coldstart-api) but not near misses", () => {
    // What the kubelet injects into every pod of a namespace holding Service coldstart-api:8476.
    const links = {
      COLDSTART_API_SERVICE_HOST: "10.100.0.7",
      COLDSTART_API_SERVICE_PORT: "8476",
      COLDSTART_API_SERVICE_PORT_API: "8476",
      COLDSTART_API_PORT: "tcp://10.100.0.7:8476",
      COLDSTART_API_PORT_8476_TCP: "tcp://10.100.0.7:8476",
      COLDSTART_API_PORT_8476_TCP_ADDR: "10.100.0.7",
      COLDSTART_API_PORT_8476_TCP_PORT: "8476",
      COLDSTART_API_PORT_8476_TCP_PROTO: "tcp",
    };
    expect(loadConfig({ env: links }).daemon.listen).toBe("127.0.0.1:8476");
    expect(codeOf(() => loadConfig({ env: { COLDSTART_LISTEN_PORT_X: "1" } }))).toMatch(
      /unknown environment variable/,
    );
  });

  it("is documented: docs/config.md holds the reference generated from the schema", async () => {
    const doc = await readFile(resolve(import.meta.dirname, "../../docs/config.md"), "utf8");
    expect(doc).toContain(`<!-- options:begin -->\n${renderOptionsReference()}<!-- options:end -->`);
  });
});
