import { listOptions } from "./load.js";

/** The options reference in docs/config.md, generated from the schema so the two never drift. */
export function renderOptionsReference(): string {
  let out = "";
  for (const { name, spec } of listOptions()) {
    const flag = spec.flag ? `\`${spec.flag}\`${spec.repeatable ? " (repeatable)" : ""}` : "none";
    out += `### ${name}\n\n${spec.help}\n\n`;
    out += `- flag: ${flag}\n`;
    out += `- env: ${spec.env.map((e) => `\`${e}\``).join(", ")} (first set wins)\n`;
    out += `- default: ${spec.default === undefined ? "unset" : `\`${JSON.stringify(spec.default)}\``}\n\n`;
  }
  return out;
}
