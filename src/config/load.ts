import type { z } from "zod";
import { ColdstartError } from "../errors.js";
import { type Config, type Group, type OptionSpec, schema } from "./schema.js";
import { closest } from "./suggest.js";

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
 * unknown COLDSTART_* variables (a misspelled one would otherwise be silently ignored; the closest
 * known one is suggested) and returns a deeply frozen Config. Throws CS_CONFIG_INVALID naming the
 * option, its source, what the value must be and the value.
 */
export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? {};
  const flags = sources.flags ?? new Map();
  const options = listOptions();

  const known = new Set(options.flatMap((o) => o.spec.env));
  for (const name of Object.keys(env)) {
    if (name.startsWith(PREFIX) && !known.has(name) && !BUILD_TIME.has(name) && !SERVICE_LINK.test(name)) {
      const meant = closest(name.slice(PREFIX.length), envSpellings(options));
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `unknown environment variable ${name}${meant ? ` (did you mean ${meant}?)` : ""}`,
        { details: { field: name } },
      );
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
    const parsed = (spec.schema as z.ZodType).safeParse(raw, { error: plainReason, reportInput: true });
    if (!parsed.success) {
      const issue = parsed.error.issues[0] as z.core.$ZodIssue;
      // An entry of a list (a repeatable flag, a comma-separated variable): name that entry.
      const [reason, value] =
        issue.path.length > 0
          ? [issue.message.replace(/^must /, "each entry must "), issue.input]
          : [issue.message, raw];
      throw new ColdstartError(
        "CS_CONFIG_INVALID",
        `${name} (from ${source}) ${reason}, got ${show(value)}`,
        {
          details: { field: name, value: raw },
        },
      );
    }
    out[group] ??= {};
    (out[group] as Record<string, unknown>)[key] = parsed.data;
  }
  return deepFreeze(out) as Config;
}

/**
 * What a misspelled COLDSTART_ variable may have meant, by the part after the prefix: each variable's
 * own name, and the option's name spelled as a variable (COLDSTART_DOWNLOAD_CONCURRENCY and
 * COLDSTART_PART_SIZE_BYTES for download.concurrency's COLDSTART_CONCURRENCY and
 * download.partSizeBytes's COLDSTART_PART_SIZE), a guess a reader of docs/config.md makes. A
 * spelling two options share (TIMEOUT_MS: peers and wait) suggests neither.
 */
function envSpellings(options: OptionEntry[]): [string, string][] {
  const meanings = new Map<string, Set<string>>();
  const add = (spelling: string, name: string) =>
    meanings.set(spelling, (meanings.get(spelling) ?? new Set()).add(name));
  for (const { group, key, spec } of options) {
    const own = spec.env.find((e) => e.startsWith(PREFIX));
    if (own === undefined) continue;
    add(own.slice(PREFIX.length), own);
    add(`${screaming(group)}_${screaming(key)}`, own);
    add(screaming(key), own);
  }
  return [...meanings].flatMap(([spelling, names]) =>
    names.size === 1 ? [[spelling, [...names][0] as string] as [string, string]] : [],
  );
}

const screaming = (camel: string) => camel.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();

/**
 * The reason a value was refused, in words that complete "<option> (from <source>) …, got <value>".
 * Messages the schema sets itself win over these; these replace zod's defaults ("Invalid input:
 * expected number, received NaN").
 */
function plainReason(issue: z.core.$ZodRawIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return `must be ${TYPE_WORDS[issue.expected] ?? issue.expected}`;
    case "too_small":
      if (issue.origin === "string" && Number(issue.minimum) === 1) return "must not be empty";
      return `must be ${issue.inclusive ? "at least" : "more than"} ${issue.minimum}`;
    case "too_big":
      return `must be ${issue.inclusive ? "at most" : "less than"} ${issue.maximum}`;
    case "invalid_value":
      return `must be one of ${issue.values.map(String).join(", ")}`;
    case "invalid_format":
      return issue.format === "url"
        ? "must be a URL"
        : `must be of the form ${issue.pattern ?? issue.format}`;
    default:
      return "must be a valid value";
  }
}

const TYPE_WORDS: Record<string, string> = {
  int: "a whole number",
  number: "a number",
  string: "a string",
  boolean: "true or false",
  array: "a list",
};

function show(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
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
