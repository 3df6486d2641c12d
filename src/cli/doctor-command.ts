import { Command } from "commander";
import { loadConfigFromProcess } from "../config/load.js";
import { toColdstartError } from "../errors.js";
import { type Check, doctorChecks } from "../node/doctor.js";
import { collectNodeFacts } from "../node/node-facts.js";
import { nodeFactsOptions, nodePolicy } from "../wiring/node.js";
import { addSchemaOptions, flagsOf } from "./options.js";
import { EXIT, reportError } from "./report.js";

const GROUPS = new Set(["node", "gds", "placement", "daemon.root", "mirror", "output", "log"]);

/**
 * `coldstart doctor [--json]`: every node fact as a check with pass/warn/fail and advice, like
 * `gdscheck -p`. Exit 0 unless a check fails (a policy the daemon would refuse to start under), 1 then,
 * 2 on a usage error. Needs no daemon and no credentials.
 */
export function doctorCommand(setExit: (code: number) => void): Command {
  const cmd = new Command("doctor").description(
    "Check this node: GPUs, GPUDirect Storage, where the staging root really lives, and the loader to use.",
  );
  const byAttr = addSchemaOptions(cmd, GROUPS);
  cmd.action(async () => {
    let json = false;
    try {
      const config = loadConfigFromProcess(flagsOf(cmd, byAttr));
      json = config.output.json;
      const facts = await collectNodeFacts(nodeFactsOptions(config));
      const checks = doctorChecks(facts, nodePolicy(config));
      // With a mirror configured: does containerd on this node use it?
      const { listen } = config.mirror;
      if (listen) {
        const { checkContainerd, mirrorDoctorCheck } = await import("../mirror/containerd-check.js");
        const mirror = await checkContainerd({
          hostRoot: config.node.hostRoot,
          registries: config.mirror.registries,
          resolveTags: config.mirror.resolveTags,
          mirrorPort: Number(listen.slice(listen.lastIndexOf(":") + 1)),
        });
        checks.push(mirrorDoctorCheck(mirror));
      }
      const summary = { pass: 0, warn: 0, fail: 0 };
      for (const c of checks) summary[c.status]++;
      if (json) {
        process.stdout.write(`${JSON.stringify({ summary, checks, facts })}\n`);
      } else {
        process.stdout.write(render(checks, config.node.hostRoot, config.daemon.root, summary, facts.gds));
      }
      setExit(summary.fail > 0 ? EXIT.failed : EXIT.ok);
    } catch (err) {
      const e = toColdstartError(err);
      reportError(e, json);
      setExit(e.code === "CS_CONFIG_INVALID" ? EXIT.usage : EXIT.failed);
    }
  });
  return cmd;
}

function render(
  checks: Check[],
  hostRoot: string,
  root: string,
  summary: Record<Check["status"], number>,
  gds: { verdict: string; loadFormat: string },
): string {
  const width = Math.max(...checks.map((c) => c.title.length));
  const lines = [`coldstart doctor: host root ${hostRoot}, staging root ${root}`, ""];
  for (const c of checks) {
    lines.push(`  ${c.status.toUpperCase().padEnd(4)}  ${c.title.padEnd(width)}  ${c.value}`);
    if (c.advice) lines.push(`  ${" ".repeat(4)}  ${" ".repeat(width)}  → ${c.advice}`);
  }
  lines.push(
    "",
    `GDS ${gds.verdict}: use vLLM --load-format ${gds.loadFormat}. ${summary.pass} passed, ${summary.warn} warnings, ${summary.fail} failed.`,
  );
  return `${lines.join("\n")}\n`;
}
