/**
 * The house rules that keep the tree navigable, checked on the sources themselves: imports point
 * one way (wiring and entry points, then capabilities, then primitives), no file-level import cycle,
 * HTTP framework code only at the HTTP edge, process.env read only by the config loader, and one
 * module that loads the native addon. A new import that runs back up fails here with the file and
 * the import named.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = resolve(import.meta.dirname, "../src");

/**
 * Layers, lowest first. A file may import its own folder or any lower layer, never a layer at or
 * above its own in another folder: peers and compile-cache do not know each other.
 */
const LAYERS: string[][] = [
  // The error catalog, then the primitives anyone may import.
  ["errors"],
  ["log", "config", "metrics", "lib", "checksums"],
  // Capabilities, each resting on the ones before.
  ["safetensors", "s3", "store", "kube"],
  ["node", "mirror", "staging"],
  ["peers", "compile-cache"],
  ["models"],
  // The edges: HTTP (the API) and gRPC (the kubelet's CSI calls).
  ["api", "csi"],
  // The daemon's components and the config-to-components mapping.
  ["daemon", "wiring"],
  // Composition root, then the command line that starts it.
  ["main"],
  ["cli"],
];

/** Where a framework import is the point of the file: the HTTP edge. */
const FASTIFY_ALLOWED = [/^api\//, /^peers\/serve\.ts$/];

interface Source {
  path: string;
  text: string;
  imports: { spec: string; target?: string }[];
}

function sources(): Source[] {
  const files = readdirSync(SRC, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".ts"));
  return files.map((path) => {
    const text = readFileSync(join(SRC, path), "utf8");
    const imports = [...text.matchAll(/(?:^|\s)(?:from|import)\s*\(?\s*"([^"]+)"/g)].map((m) => {
      const spec = m[1] as string;
      if (!spec.startsWith(".")) return { spec };
      const target = relative(SRC, resolve(dirname(join(SRC, path)), spec)).replace(/\.js$/, ".ts");
      return { spec, target };
    });
    return { path, text, imports };
  });
}

function folderOf(path: string): string {
  const [head, ...rest] = path.split("/");
  return rest.length === 0 ? (head as string).replace(/\.ts$/, "") : (head as string);
}

function layerOf(folder: string): number {
  const i = LAYERS.findIndex((l) => l.includes(folder));
  if (i < 0) throw new Error(`src/${folder} has no layer in test/architecture.test.ts: give it one`);
  return i;
}

describe("the source tree", () => {
  const all = sources();

  it("imports only its own folder or lower layers", () => {
    const upward: string[] = [];
    for (const s of all) {
      const from = folderOf(s.path);
      for (const i of s.imports) {
        if (!i.target) continue;
        const to = folderOf(i.target);
        if (to !== from && layerOf(to) >= layerOf(from)) upward.push(`src/${s.path} imports ${i.spec}`);
      }
    }
    expect(upward).toEqual([]);
  });

  it("has no import cycle between files", () => {
    const graph = new Map(all.map((s) => [s.path, s.imports.flatMap((i) => (i.target ? [i.target] : []))]));
    // Tarjan's strongly connected components: any component of two or more files is a cycle.
    const index = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const onStack = new Set<string>();
    const cycles: string[][] = [];
    let next = 0;
    const visit = (v: string) => {
      index.set(v, next);
      low.set(v, next++);
      stack.push(v);
      onStack.add(v);
      for (const w of graph.get(v) ?? []) {
        if (!graph.has(w)) continue;
        if (!index.has(w)) {
          visit(w);
          low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
        } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
      }
      if (low.get(v) === index.get(v)) {
        const scc: string[] = [];
        let w: string;
        do {
          w = stack.pop() as string;
          onStack.delete(w);
          scc.push(w);
        } while (w !== v);
        if (scc.length > 1) cycles.push(scc.sort());
      }
    };
    for (const v of graph.keys()) if (!index.has(v)) visit(v);
    expect(cycles).toEqual([]);
  });

  it("imports fastify only at the HTTP edge", () => {
    const offenders = all
      .filter((s) => s.imports.some((i) => i.spec === "fastify" || i.spec.startsWith("@fastify/")))
      .map((s) => s.path)
      .filter((p) => !FASTIFY_ALLOWED.some((re) => re.test(p)));
    expect(offenders).toEqual([]);
  });

  it("reads process.env only in the config loader", () => {
    // cli/bin.ts sets one SDK switch before anything is loaded; it reads nothing.
    const readers = all
      .filter((s) => /process\.env\b(?!\.\w+\s*\?\?=)/.test(s.text.replace(/^\s*(\*|\/\/).*$/gm, "")))
      .map((s) => s.path)
      .filter((p) => !p.startsWith("config/"));
    expect(readers).toEqual([]);
  });

  it("loads the native addon from one module", () => {
    const loaders = all.filter((s) => /\.node"/.test(s.text)).map((s) => s.path);
    expect(loaders).toEqual(["node/native.ts"]);
  });

  it("has every folder in a layer", () => {
    const folders = new Set(all.map((s) => folderOf(s.path)));
    for (const f of folders) expect(() => layerOf(f)).not.toThrow();
  });
});
