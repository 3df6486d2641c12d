/**
 * The chart's values.schema.json, through the real helm binary:
 * - a misspelt key or a bad value makes `helm template` fail with one problem, the line naming the
 *   field's path as Helm prints it; the same values render once the schema is removed from a copy of
 *   the chart, so the schema is what refuses them;
 * - every object of values.yaml refuses a key it does not know, except the free-form maps;
 * - for each setting the chart writes into the ConfigMap, helm accepts a value exactly when the
 *   daemon's loadConfig accepts it from the variable the chart sets (the enums are the daemon's).
 * helm is built from the Go module proxy by scripts/go-tools.mjs.
 */
import { execFile } from "node:child_process";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments, stringify } from "yaml";
import { listOptions, loadConfig } from "../../src/config/load.js";
import { PLACEMENTS } from "../../src/config/schema.js";
import { requireGoTool } from "../support/go-tools.js";

const root = resolve(import.meta.dirname, "../..");
const chart = join(root, "deploy", "helm", "coldstart");
const run = promisify(execFile);

interface Rendered {
  code: number;
  stderr: string;
}

async function template(bin: string, dir: string, args: string[]): Promise<Rendered> {
  try {
    await run(bin, ["template", "coldstart", dir, "--namespace", "coldstart", ...args], {
      maxBuffer: 64 << 20,
    });
    return { code: 0, stderr: "" };
  } catch (e) {
    const err = e as { code?: unknown; stderr?: string };
    return { code: typeof err.code === "number" ? err.code : -1, stderr: err.stderr ?? "" };
  }
}

const sets = (set: string[]) => set.flatMap((s) => ["--set", s]);

/** The schema's complaints, one line each: `- at '/peers': additional properties 'enabeld' not allowed`. */
const problems = (stderr: string) => stderr.split("\n").filter((l) => l.startsWith("- at "));

let work: string;
/** A copy of the chart without values.schema.json (links resolved, as `helm package` stores them). */
let unchecked: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "cs-helm-values-"));
  unchecked = join(work, "coldstart");
  await cp(chart, unchecked, { recursive: true, dereference: true });
  await rm(join(unchecked, "values.schema.json"));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("the Helm chart's values schema", () => {
  it("accepts values.yaml as it is", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    expect(await template(bin, chart, [])).toEqual({ code: 0, stderr: expect.any(String) });
  });

  it.for([
    { set: ["peers.enabeld=true"], error: "- at '/peers': additional properties 'enabeld' not allowed" },
    { set: ["peer.enabled=false"], error: "- at '': additional properties 'peer' not allowed" },
    {
      set: ["tokens.scoped.enabeld=true"],
      error: "- at '/tokens/scoped': additional properties 'enabeld' not allowed",
    },
    {
      set: ["metrics.serviceMonitor.enable=true"],
      error: "- at '/metrics/serviceMonitor': additional properties 'enable' not allowed",
    },
    {
      set: ["config.gdsMode=sometimes"],
      error: "- at '/config/gdsMode': value must be one of 'auto', 'on', 'off', true, false",
    },
    {
      set: ["config.onRefusal=crash"],
      error: "- at '/config/onRefusal': value must be one of 'exit', 'serve'",
    },
    {
      set: ["config.evictionHighWatermark=150"],
      error: "- at '/config/evictionHighWatermark': maximum: got 150, want 100",
    },
    {
      set: ["image.pullPolicy=Alwayss"],
      error: "- at '/image/pullPolicy': value must be one of '', 'Always', 'IfNotPresent', 'Never'",
    },
    // Without the schema the image would render as ghcr.io/coldstart-dev/coldstart:%!s(int64=2).
    { set: ["image.tag=2"], error: "- at '/image/tag': got number, want string" },
    {
      set: ["config.extra.LOG_LEVEL=debug"],
      error: "- at '/config/extra': additional properties 'LOG_LEVEL' not allowed",
    },
    {
      set: ["sources.allow={s3://a/**\\,s3://b/**}"],
      error: "- at '/sources/allow/0': 's3://a/**,s3://b/**' does not match pattern '^[^,]+$'",
    },
    {
      set: ["extraEnv[0].name=A,extraEnv[0].value=b,extraEnv[0].valueFrom.fieldRef.fieldPath=x"],
      error: "- at '/extraEnv/0/value': false schema",
    },
  ])("refuses --set $set.0, naming the field", async ({ set, error }, ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const refused = await template(bin, chart, sets(set));
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("values don't meet the specifications of the schema(s)");
    expect(problems(refused.stderr)).toEqual([error]);
    expect(await template(bin, unchecked, sets(set))).toMatchObject({ code: 0 });
  });

  it("refuses a placement the daemon does not know, printing the pattern of the ones it does", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const schema = JSON.parse(await readFile(join(chart, "values.schema.json"), "utf8"));
    const pattern: string = schema.properties.config.properties.placementRequire.pattern;
    const set = sets(["config.placementRequire=nvme-ebs\\,ssd"]);
    const refused = await template(bin, chart, set);
    expect(problems(refused.stderr)).toEqual([
      `- at '/config/placementRequire': 'nvme-ebs,ssd' does not match pattern '${pattern}'`,
    ]);
    for (const p of PLACEMENTS) expect(pattern).toContain(p);
    expect(await template(bin, unchecked, set)).toMatchObject({ code: 0 });
  });

  it("takes an unquoted gdsMode on or off, which Helm reads as YAML 1.1's true or false, as on or off", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    const file = join(work, "gds.yaml");
    for (const [written, rendered] of [
      ["on", "on"],
      ["off", "off"],
      ['"on"', "on"],
      ["auto", "auto"],
    ]) {
      await writeFile(file, `config:\n  gdsMode: ${written}\n`);
      const { stdout } = await run(bin, ["template", "coldstart", chart, "-n", "coldstart", "-f", file], {
        maxBuffer: 64 << 20,
      });
      const cm = parseAllDocuments(stdout, { version: "1.1" })
        .map((d) => d.toJS())
        .find((o) => o?.kind === "ConfigMap" && o.metadata.name.startsWith("coldstart-config-"));
      expect(cm.data.COLDSTART_GDS_MODE, written).toBe(rendered);
    }
  });

  it("refuses an unknown key in every object of values.yaml, and takes any key in the free-form maps", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    // Free-form maps and the key a user might put there.
    const FREE: Record<string, string> = {
      nodeSelector: "pool",
      affinity: "podAffinity",
      resources: "claims",
      "serviceAccount.annotations": "team",
      "config.extra": "COLDSTART_EVICTION_MAX_BYTES",
      "metrics.serviceMonitor.labels": "release",
      "metrics.prometheusRule.labels": "release",
      "metrics.grafanaDashboard.labels": "team",
    };
    const values = parse(await readFile(join(chart, "values.yaml"), "utf8")) as Record<string, unknown>;
    const objects: string[] = [];
    const walk = (v: Record<string, unknown>, path: string) => {
      objects.push(path);
      if (path in FREE) return;
      for (const [k, x] of Object.entries(v)) {
        if (x && typeof x === "object" && !Array.isArray(x))
          walk(x as Record<string, unknown>, path ? `${path}.${k}` : k);
      }
    };
    walk(values, "");
    expect(objects.filter((p) => p in FREE).sort()).toEqual(Object.keys(FREE).sort());
    for (const path of objects) {
      const prefix = path ? `${path}.` : "";
      if (path in FREE) {
        const accepted = await template(bin, chart, sets([`${prefix}${FREE[path]}=x`]));
        expect(accepted.code, `${path}.${FREE[path]}: ${accepted.stderr}`).toBe(0);
      } else {
        const refused = await template(bin, chart, sets([`${prefix}bogusKey=x`]));
        const at = path ? `/${path.replaceAll(".", "/")}` : "";
        expect(problems(refused.stderr), path || "(top level)").toEqual([
          `- at '${at}': additional properties 'bogusKey' not allowed`,
        ]);
      }
    }
  });

  it("accepts a setting's value exactly when the daemon accepts it from the chart's ConfigMap", async (ctx) => {
    const bin = requireGoTool("helm", ctx.skip);
    /** The daemon's own choices for the option read from `env`, where it is an enum. */
    const choices = (env: string): string[] => {
      const option = listOptions().find((o) => o.spec.env.includes(env));
      if (!option) throw new Error(`no option reads ${env}`);
      return ((option.spec.schema as { options?: string[] }).options ?? []).map(String);
    };
    const SETTINGS: { path: [string, string]; env: string; values: unknown[] }[] = [
      { path: ["config", "gdsMode"], env: "COLDSTART_GDS_MODE", values: ["sometimes", "ON"] },
      { path: ["config", "onRefusal"], env: "COLDSTART_ON_REFUSAL", values: ["crash", "Serve"] },
      { path: ["config", "logLevel"], env: "COLDSTART_LOG_LEVEL", values: ["verbose"] },
      {
        path: ["config", "placementRequire"],
        env: "COLDSTART_PLACEMENT_REQUIRE",
        values: [
          "",
          "auto",
          ...PLACEMENTS,
          PLACEMENTS.join(","),
          "nvme-instance-store, nvme-local",
          "auto,nvme-ebs",
          "ssd",
          "nvme-ebs,ssd",
        ],
      },
      {
        path: ["config", "evictionHighWatermark"],
        env: "COLDSTART_EVICTION_HIGH_WATERMARK",
        values: [0, 1, 90, 100, 101, 90.5],
      },
      {
        path: ["config", "evictionLowWatermark"],
        env: "COLDSTART_EVICTION_LOW_WATERMARK",
        values: [-1, 0, 80, 100, 101, 80.5],
      },
      { path: ["config", "awsRegion"], env: "AWS_REGION", values: ["us-east-1", "eu-west-2", "US-EAST-1"] },
      {
        path: ["config", "compileCacheRemote"],
        env: "COLDSTART_COMPILE_CACHE_REMOTE",
        values: ["", "s3://my-models-bucket/compile-cache/", "s3://b", "https://example.com/cache/"],
      },
    ];
    for (const { path, env, values } of SETTINGS) {
      const [group, key] = path;
      const cases = [...choices(env), ...values];
      const chartSays: [unknown, boolean][] = [];
      const daemonSays: [unknown, boolean][] = [];
      for (const value of cases) {
        const file = join(work, "values.yaml");
        // As YAML 1.1, the way Helm reads it: the string on stays "on", not true.
        await writeFile(file, stringify({ [group]: { [key]: value } }, { version: "1.1" }));
        chartSays.push([value, (await template(bin, chart, ["-f", file])).code === 0]);
        let daemon = true;
        try {
          loadConfig({ env: { [env]: String(value) } });
        } catch {
          daemon = false;
        }
        daemonSays.push([value, daemon]);
      }
      expect(chartSays, `${group}.${key}`).toEqual(daemonSays);
      // Neither side accepts or refuses everything: the cases tell something.
      expect(new Set(daemonSays.map(([, ok]) => ok)), `${group}.${key}`).toEqual(new Set([true, false]));
    }
  });
});
