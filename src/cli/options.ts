/** Schema options as commander flags: one place turns the config schema into a command's flags. */
import { type Command, Option } from "commander";
import { listOptions, type OptionName } from "../config/load.js";

/**
 * Adds every schema option of the given groups (or single options, by dotted name) as a flag;
 * returns attribute name → option name.
 */
export function addSchemaOptions(cmd: Command, groups: Set<string>): Map<string, OptionName> {
  const byAttr = new Map<string, OptionName>();
  for (const o of listOptions()) {
    if (!(groups.has(o.group) || groups.has(o.name)) || !o.spec.flag) continue;
    const env = o.spec.env.length ? ` [env: ${o.spec.env.join(", ")}]` : "";
    const def = o.spec.default !== undefined ? ` (default: ${JSON.stringify(o.spec.default)})` : "";
    const opt = new Option(o.spec.flag, `${o.spec.help}${env}${def}`);
    if (o.spec.repeatable) opt.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    cmd.addOption(opt);
    byAttr.set(opt.attributeName(), o.name);
  }
  return byAttr;
}

export function flagsOf(cmd: Command, byAttr: Map<string, OptionName>): Map<OptionName, unknown> {
  const flags = new Map<OptionName, unknown>();
  for (const [attr, value] of Object.entries(cmd.opts())) {
    const name = byAttr.get(attr);
    if (name !== undefined && value !== undefined) flags.set(name, value);
  }
  return flags;
}
