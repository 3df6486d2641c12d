import type { z } from "zod";
import { ColdstartError } from "../errors.js";
import { type Config, type Group, type OptionSpec, schema } from "./schema.js";

/** Dotted option name, e.g. "download.partSizeBytes". */
export type OptionName = string;

export interface OptionEntry {
  name: OptionName;
  group: Group;
  key: string;
  spec: OptionSpec;
}

/** Every option of the schema, in declaration order. */
export function listOptions(): OptionEntry[] {
  const out: OptionEntry[] = [];
  for (const [group, options] of Object.entries(schema) as [Group, Record<string, OptionSpec>][]) {
    for (const [key, spec] of Object.entries(options))
      out.push({ name: `${group}.${key}`, group, key, spec });
  }
  return out;
}

export interface ConfigSources {
  /** Values given on the command line, by option name. Highest precedence. */
  flags?: ReadonlyMap<OptionName, unknown>;
  /** The process environment (only COLDSTART_* and the AWS names the schema lists are read). */
  env?: Readonly<Record<string, string | undefined>>;
}

const PREFIX = "COLDSTART_";
/** Read by build scripts, not by the daemon; an image may keep them in its environment. */
const BUILD_TIME = new Set(["COLDSTART_NATIVE_BUILD"]);
/**
 * The variables the kubelet injects for every Service of the pod's namespace (unless
 * enableServiceLinks is false): a Service named coldstart-api yields COLDSTART_API_SERVICE_HOST,
 * COLDSTART_API_PORT_8476_TCP_ADDR and so on. Not ours, and never a misspelling of ours.
 */
const SERVICE_LINK =
  /^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$/;

/**
 * Resolves every option (flag, then env, then default), validates it against the schema, rejects
 * unknown COLDSTART_* variables (a misspelled one would otherwise be silently ignored) and returns
 * a deeply frozen Config. Throws CS_CONFIG_INVALID naming the option, its source and the value.
 */
export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? {};
  const flags = sources.flags ?? new Map();
  const options = listOptions();

  const known = new Set(options.flatMap((o) => o.spec.env));
  for (const name of Object.keys(env)) {
    if (name.startsWith(PREFIX) && !known.has(name) && !BUILD_TIME.has(name) && !SERVICE_LINK.test(name)) {
      throw new ColdstartError("CS_CONFIG_INVALID", `unknown environment variable ${name}`, {
        details: { field: name },
      });
    }
  }

  const out: Record<string, Record<string, unknown>> = {};
  for (const { name, group, key, spec } of options) {
    let raw: unknown = spec.default;
    let source = "default";
    const envName = spec.env.find((n) => env[n] !== undefined && env[n] !== "");
    if (envName !== undefined) {
      raw = env[envName];
      source = `env ${envName}`;
    }
    if (flags.has(name) && flags.get(name) !== undefined) {
      raw = flags.get(name);
      source = spec.flag ? `flag ${spec.flag.split(" ")[0]}` : "flag";
    }
    const parsed = (spec.schema as z.ZodType).safeParse(raw);
    if (!parsed.success) {
      const reason = parsed.error.issues.map((i) => i.message).join("; ");
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `${name} (from ${source}) is invalid: ${reason}; got ${JSON.stringify(raw)}`,
        { details: { field: name, value: raw } },
      );
    }
    out[group] ??= {};
    (out[group] as Record<string, unknown>)[key] = parsed.data;
  }
  return deepFreeze(out) as Config;
}

/** The process environment, for code that must hand it to a library (in-cluster Kubernetes config). */
export function environment(): Readonly<Record<string, string | undefined>> {
  return process.env;
}

/** The one place that reads the process environment. */
export function loadConfigFromProcess(flags?: ReadonlyMap<OptionName, unknown>): Config {
  return loadConfig({ env: process.env, ...(flags ? { flags } : {}) });
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
