/**
 * Rendering the kustomize tree under deploy/ for the tests of test/deploy: the base, or the base with
 * some of deploy/components, through `kubectl kustomize`, parsed as YAML 1.1 (as the API server reads
 * it: `defaultMode: 0400` is octal). Tests that render call `hasKubectl()` to skip without kubectl.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { promisify } from "node:util";
import { expect } from "vitest";
import { parseAllDocuments } from "yaml";

const run = promisify(execFile);

/** The kustomize base: deploy/ at the repository root. */
export const deploy = join(resolve(import.meta.dirname, "../.."), "deploy");

/** A rendered object, read freely; a test that needs `metadata.name` a string passes its own type. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name?: string;
    generateName?: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are read freely as plain data
  [key: string]: any;
}

let kubectl: boolean | undefined;

/**
 * Whether `kubectl` runs here (asked once), for `it.skipIf(!hasKubectl())`. Under CI a missing kubectl
 * throws instead, as requireGoTool does: the machines CI runs on carry it (/usr/bin/kubectl), and a
 * skip there would hide the helm-versus-kustomize comparison and every rendered-manifest check.
 */
export function hasKubectl(): boolean {
  if (kubectl === undefined) {
    try {
      execFileSync("kubectl", ["version", "--client"], { stdio: "ignore" });
      kubectl = true;
    } catch {
      kubectl = false;
    }
  }
  if (!kubectl && process.env.CI) {
    throw new Error("kubectl is not on PATH: under CI the kustomize renders must run, not skip");
  }
  return kubectl;
}

/** Every document of a YAML stream, parsed as YAML 1.1 with no errors; empty documents dropped. */
export function parseObjects<T = K8sObject>(text: string): T[] {
  return parseAllDocuments(text, { version: "1.1" })
    .map((d) => {
      expect(d.errors).toEqual([]);
      return d.toJS() as T | null;
    })
    .filter((o): o is T => o !== null);
}

/**
 * `kubectl kustomize` of the base, or with `components` (names under deploy/components) of an overlay
 * outside deploy/: kustomize refuses an overlay inside its base.
 */
export async function kustomize<T = K8sObject>(components: string[] = []): Promise<T[]> {
  if (components.length === 0)
    return parseObjects<T>((await run("kubectl", ["kustomize", deploy], { maxBuffer: 64 << 20 })).stdout);
  const overlay = await mkdtemp(join(tmpdir(), "cs-overlay-"));
  try {
    const rel = relative(overlay, deploy);
    await writeFile(
      join(overlay, "kustomization.yaml"),
      `resources: [${rel}]\ncomponents: [${components.map((c) => `${rel}/components/${c}`).join(", ")}]\n`,
    );
    return parseObjects<T>((await run("kubectl", ["kustomize", overlay], { maxBuffer: 64 << 20 })).stdout);
  } finally {
    await rm(overlay, { recursive: true, force: true });
  }
}
