/**
 * Pod Security for the inference examples, judged by the real PodSecurity admission evaluator
 * (k8s.io/pod-security-admission, through test/tools/psa-check; built by scripts/go-tools.mjs): the
 * CSI example runs in a namespace that enforces `restricted` and passes it, while the hostPath
 * example does not (so the check has teeth).
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { requireGoTool } from "../support/go-tools.js";

const examples = join(resolve(import.meta.dirname, "../.."), "deploy", "examples");
const RESTRICTED = join(examples, "vllm-csi-restricted.yaml");
const HOSTPATH = join(examples, "vllm-deployment.yaml");

interface Verdict {
  kind: string;
  namespace: string;
  name: string;
  allowed: boolean;
  forbidden: { reason: string; detail: string }[];
}

async function psaCheck(bin: string, file: string, level = "restricted"): Promise<Verdict[]> {
  const { stdout } = await promisify(execFile)(bin, ["--level", level, file]);
  return stdout
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Verdict);
}

describe("Pod Security of the inference examples", () => {
  it("admits the CSI example's Deployment at restricted", async (ctx) => {
    const bin = requireGoTool("psa-check", ctx.skip);
    const verdicts = await psaCheck(bin, RESTRICTED);
    expect(verdicts).toEqual([
      {
        kind: "Deployment",
        namespace: "inference-restricted",
        name: "llama-3-1-8b",
        allowed: true,
        forbidden: [],
      },
    ]);
  });

  it("refuses the hostPath example at restricted, naming its hostPath volumes", async (ctx) => {
    const bin = requireGoTool("psa-check", ctx.skip);
    const verdicts = await psaCheck(bin, HOSTPATH);
    const deployment = verdicts.find((v) => v.kind === "Deployment");
    expect(deployment).toMatchObject({ allowed: false });
    expect(deployment?.forbidden).toContainEqual({
      reason: "restricted volume types",
      detail: expect.stringContaining('use restricted volume type "hostPath"'),
    });
    // The same evaluator at privileged admits anything: the verdict above is the level's, not a parse.
    expect((await psaCheck(bin, HOSTPATH, "privileged")).every((v) => v.allowed)).toBe(true);
  });

  it("puts the CSI example in a namespace that enforces restricted", async () => {
    const docs = parseAllDocuments(await readFile(RESTRICTED, "utf8")).map(
      (d) => d.toJS() as { kind: string; metadata: { name: string; labels?: Record<string, string> } },
    );
    const deployment = docs.find((d) => d.kind === "Deployment") as unknown as {
      metadata: { namespace: string };
    };
    const ns = docs.find((d) => d.kind === "Namespace" && d.metadata.name === deployment.metadata.namespace);
    expect(ns?.metadata.labels).toMatchObject({ "pod-security.kubernetes.io/enforce": "restricted" });
  });
});
