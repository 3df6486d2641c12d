/**
 * Does this node's containerd actually use the mirror? Settings that silently disable it, read from
 * the host's containerd config and hosts.toml files (../shared/FACTS.md):
 *
 * - `config_path` unset (1.x: plugins."io.containerd.grpc.v1.cri".registry; 2.x:
 *   plugins."io.containerd.cri.v1.images".registry): hosts.toml files are ignored. The GPU Operator
 *   rewrites the config and can drop it.
 * - no hosts.toml for a mirrored registry, or one whose first host is not this mirror.
 * - `discard_unpacked_layers = true` (the EKS AMI default): layer blobs are deleted after unpacking,
 *   so this node's content store has nothing to serve its peers.
 * - 2.x: `use_local_image_pull = false`, with which some versions bypass the hosts.toml path.
 * - with mirror.resolveTags: a first host without the `resolve` capability, so no tag ever reaches it.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { parse } from "smol-toml";

export type MirrorCheckCode =
  | "config_unreadable"
  | "config_path_unset"
  | "hosts_toml_missing"
  | "hosts_toml_not_first"
  | "discard_unpacked_layers"
  | "use_local_image_pull_off"
  | "hosts_toml_no_resolve";

export interface MirrorCheck {
  /** ok: containerd will ask this mirror first for every mirrored registry. */
  status: "ok" | "broken";
  configFile: string;
  /** The config's `version` (2: containerd 1.x, 3: 2.x). */
  version: number | null;
  /** The hosts.toml directory containerd reads, with the host root prefix. */
  certsDir: string | null;
  problems: { code: MirrorCheckCode; message: string }[];
}

export interface MirrorCheckOptions {
  hostRoot: string;
  /** Default `<hostRoot>/etc/containerd/config.toml`. */
  configFile?: string | undefined;
  registries: string[];
  /** The port containerd must reach the mirror on (the first host in hosts.toml). */
  mirrorPort: number;
  /** mirror.resolveTags: the mirror must have the `resolve` capability too. */
  resolveTags?: boolean | undefined;
}

type Table = Record<string, unknown>;

export async function checkContainerd(o: MirrorCheckOptions): Promise<MirrorCheck> {
  const configFile = o.configFile ?? join(o.hostRoot, "etc/containerd/config.toml");
  const out: MirrorCheck = { status: "broken", configFile, version: null, certsDir: null, problems: [] };
  const problem = (code: MirrorCheckCode, message: string) => out.problems.push({ code, message });
  let config: Table;
  try {
    config = parse(await readFile(configFile, "utf8")) as Table;
  } catch (err) {
    problem("config_unreadable", `${configFile}: ${(err as Error).message}`);
    return out;
  }
  const version = typeof config.version === "number" ? config.version : null;
  out.version = version;
  const plugins = table(config.plugins);
  // 2.x moved image settings into their own plugin; 1.x keeps them under the CRI plugin.
  const v3 = version !== null && version >= 3;
  const images = v3
    ? table(plugins["io.containerd.cri.v1.images"])
    : table(plugins["io.containerd.grpc.v1.cri"]);
  const registry = table(images.registry);
  const configPath =
    typeof registry.config_path === "string" && registry.config_path !== "" ? registry.config_path : null;
  const discard = v3 ? images.discard_unpacked_layers : table(images.containerd).discard_unpacked_layers;
  if (discard === true) {
    problem(
      "discard_unpacked_layers",
      "discard_unpacked_layers = true: containerd deletes layer blobs after unpacking, so this node cannot serve them to peers",
    );
  }
  if (v3 && images.use_local_image_pull === false) {
    problem(
      "use_local_image_pull_off",
      "use_local_image_pull = false: some containerd 2.x versions then bypass hosts.toml",
    );
  }
  if (!configPath) {
    problem(
      "config_path_unset",
      `no registry config_path in ${configFile}: containerd ignores every hosts.toml, so it never asks the mirror`,
    );
  } else {
    out.certsDir = join(o.hostRoot, configPath);
    // Mirroring any registry takes containerd's catch-all host config.
    for (const registry of o.registries.length > 0 ? o.registries : ["_default"]) {
      const file = join(out.certsDir, registry, "hosts.toml");
      let hosts: Table;
      try {
        hosts = parse(await readFile(file, "utf8")) as Table;
      } catch {
        problem(
          "hosts_toml_missing",
          `${file} is missing or unreadable: pulls from ${registry} skip the mirror`,
        );
        continue;
      }
      const first = Object.entries(table(hosts.host))[0];
      const port = first ? portOf(first[0]) : null;
      const caps = first ? table(first[1]).capabilities : undefined;
      const pulls = !Array.isArray(caps) || caps.includes("pull");
      if (!first || port !== o.mirrorPort || !pulls) {
        problem(
          "hosts_toml_not_first",
          `${file}: the first host is ${first ? first[0] : "none"}, not this mirror (port ${o.mirrorPort}, capability pull)`,
        );
      } else if (o.resolveTags && Array.isArray(caps) && !caps.includes("resolve")) {
        problem(
          "hosts_toml_no_resolve",
          `${file}: mirror.resolveTags is on but the mirror lacks the resolve capability: tags go to ${registry}`,
        );
      }
    }
  }
  out.status = out.problems.length === 0 ? "ok" : "broken";
  return out;
}

function table(v: unknown): Table {
  return v && typeof v === "object" && !Array.isArray(v) ? (v as Table) : {};
}

function portOf(url: string): number | null {
  try {
    const u = new URL(url);
    return Number(u.port || (u.protocol === "https:" ? 443 : 80));
  } catch {
    return null;
  }
}

/** The check as a doctor line: warn when the mirror would be bypassed, with what to change. */
export function mirrorDoctorCheck(c: MirrorCheck) {
  return {
    id: "mirror.containerd",
    title: "containerd uses the mirror",
    value:
      c.status === "ok"
        ? `yes (${c.configFile}, hosts.toml in ${c.certsDir})`
        : c.problems.map((p) => p.message).join("; "),
    status: c.status === "ok" ? ("pass" as const) : ("warn" as const),
    advice:
      c.status === "ok"
        ? null
        : 'Set the registry config_path, write hosts.toml for each mirrored registry with this mirror as the first host (capabilities ["pull"]), and keep discard_unpacked_layers false (docs/peers.md).',
    codes: c.problems.map((p) => p.code),
  };
}

/** Every code, for metrics exported at zero from start-up. */
export const MIRROR_CHECK_CODES: readonly MirrorCheckCode[] = [
  "config_unreadable",
  "config_path_unset",
  "hosts_toml_missing",
  "hosts_toml_not_first",
  "discard_unpacked_layers",
  "use_local_image_pull_off",
  "hosts_toml_no_resolve",
];
