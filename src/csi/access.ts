/**
 * Who may mount what: csi.allow rules `<namespace glob>=<source glob>`. A pod's namespace (from the
 * kubelet, not from the pod) must match a rule whose source glob matches the volume's source;
 * nothing matches by default. sources.allow still applies on top (the daemon fetches nothing else).
 */
import picomatch from "picomatch";
import { ColdstartError } from "../errors.js";

export interface AccessRule {
  namespace: string;
  source: string;
}

/** Splits a rule at its first `=` (namespace names hold none; S3 keys may). */
export function parseAccessRule(rule: string): AccessRule | undefined {
  const at = rule.indexOf("=");
  if (at <= 0 || at === rule.length - 1) return undefined;
  return { namespace: rule.slice(0, at).trim(), source: rule.slice(at + 1).trim() };
}

export class AccessPolicy {
  readonly #rules: { namespace: (s: string) => boolean; source: (s: string) => boolean }[];

  constructor(rules: readonly AccessRule[]) {
    this.#rules = rules.map((r) => ({
      namespace: picomatch(r.namespace),
      source: picomatch(r.source, { dot: true }),
    }));
  }

  /** Throws CS_CSI_NAMESPACE_DENIED naming the namespace and the source unless a rule allows both. */
  check(namespace: string, source: string): void {
    if (this.#rules.some((r) => r.namespace(namespace) && r.source(source))) return;
    throw new ColdstartError(
      "CS_CSI_NAMESPACE_DENIED",
      `namespace ${namespace} may not mount ${source}: no csi.allow rule matches both` +
        (this.#rules.length === 0 ? " (csi.allow is empty: nothing is allowed)" : ""),
      { details: { field: "csi.allow", value: `${namespace}=${source}` } },
    );
  }
}
