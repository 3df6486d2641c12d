/**
 * What the alert and dashboard tests share: the Prometheus binaries (Debian's `prometheus` package,
 * installed by scripts/install-test-deps.sh), the PrometheusRule and the dashboard as files, every
 * PromQL expression in them, and the metric and label names an expression uses.
 */
import { accessSync, constants, readFileSync } from "node:fs";
import { delimiter, join, resolve } from "node:path";
import { parse } from "yaml";

const root = resolve(import.meta.dirname, "../..");
export const RULES_FILE = join(root, "deploy/components/prometheus-rules/prometheusrule.yaml");
export const DASHBOARD_FILE = join(root, "deploy/components/grafana-dashboard/coldstart-dashboard.json");

/** A program on PATH, or undefined. */
export function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * The binary of Debian's `prometheus` package (`prometheus`, `promtool`); when it is missing, throws
 * under CI and otherwise skips the test through `skip` (vitest's `ctx.skip`).
 */
export function requirePrometheusTool(
  name: "prometheus" | "promtool",
  skip: (note?: string) => never,
): string {
  const path = onPath(name);
  if (path) return path;
  const why = `${name} is not on PATH: run \`sudo bash scripts/install-test-deps.sh\` (Debian's prometheus package; npm test's pretest does it as root)`;
  if (process.env.CI) throw new Error(why);
  return skip(why);
}

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface PrometheusRuleObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; labels: Record<string, string> };
  spec: { groups: { name: string; rules: AlertRule[] }[] };
}

export function loadPrometheusRule(): PrometheusRuleObject {
  return parse(readFileSync(RULES_FILE, "utf8")) as PrometheusRuleObject;
}

export function alertRules(rule = loadPrometheusRule()): AlertRule[] {
  return rule.spec.groups.flatMap((g) => g.rules);
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: { refId: string; expr: string; datasource?: { type: string; uid: string } }[];
  panels?: Panel[];
}

export interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: unknown; definition?: string }[] };
}

export function loadDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_FILE, "utf8")) as Dashboard;
}

/** Every panel, those inside collapsed rows included. */
export function panels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Where an expression comes from, for messages. */
export interface Expression {
  where: string;
  expr: string;
}

/**
 * Every PromQL expression of the dashboard, with Grafana's variables replaced by what Grafana would
 * send ($node: all nodes; the range and interval variables: durations). The `node` variable's
 * `label_values(metric, label)` is Grafana's, not PromQL: it stands as the selector it reads.
 */
export function dashboardExpressions(d = loadDashboard()): Expression[] {
  const out: Expression[] = [];
  for (const p of panels(d)) {
    for (const t of p.targets ?? [])
      out.push({ where: `panel "${p.title}" ${t.refId}`, expr: grafanaToPromql(t.expr) });
  }
  for (const v of d.templating.list) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : (v.query as { query: string }).query;
    const m = /^label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$/.exec(q);
    out.push({ where: `variable $${v.name}`, expr: m ? `count by (${m[2]}) (${m[1]})` : q });
  }
  return out;
}

export function ruleExpressions(rule = loadPrometheusRule()): Expression[] {
  return alertRules(rule).map((r) => ({ where: `alert ${r.alert}`, expr: r.expr }));
}

export function grafanaToPromql(expr: string): string {
  return expr
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__interval", "15s")
    .replaceAll("$__range", "1h")
    .replaceAll(/\$\{?node\}?/g, ".*");
}

/** Operators, aggregations and modifiers that read like identifiers (an aggregation may precede `by`). */
const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "inf",
  "nan",
  "atan2",
  "sum",
  "min",
  "max",
  "avg",
  "group",
  "stddev",
  "stdvar",
  "count",
  "count_values",
  "bottomk",
  "topk",
  "quantile",
]);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LISTS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);

/**
 * The metric names and label names an expression uses (selectors, label matchers, by/without/on/
 * ignoring/group_* lists). Strings, numbers, durations and function names are left out.
 */
export function promqlNames(expr: string): { metrics: string[]; labels: string[] } {
  const metrics = new Set<string>();
  const labels = new Set<string>();
  let i = 0;
  const ws = () => {
    while (i < expr.length && /\s/.test(expr[i] as string)) i++;
  };
  const string = () => {
    const quote = expr[i];
    i++;
    while (i < expr.length && expr[i] !== quote) i += expr[i] === "\\" ? 2 : 1;
    i++;
  };
  const ident = (): string => {
    const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(expr.slice(i));
    if (!m) return "";
    i += m[0].length;
    return m[0];
  };
  while (i < expr.length) {
    const c = expr[i] as string;
    if (/\s/.test(c)) i++;
    else if (c === '"' || c === "'" || c === "`") string();
    else if (c === "#") {
      while (i < expr.length && expr[i] !== "\n") i++;
    } else if (c === "[") {
      while (i < expr.length && expr[i] !== "]") i++;
      i++;
    } else if (c === "{") {
      // Matchers: name op "value", comma separated.
      i++;
      for (;;) {
        ws();
        if (i >= expr.length || expr[i] === "}") break;
        if (expr[i] === ",") {
          i++;
          continue;
        }
        const name = ident();
        if (!name) throw new Error(`cannot read the label matchers of: ${expr}`);
        labels.add(name);
        ws();
        while (i < expr.length && /[=!~]/.test(expr[i] as string)) i++;
        ws();
        if (expr[i] === '"' || expr[i] === "'" || expr[i] === "`") string();
      }
      i++;
    } else if (/[0-9.]/.test(c)) {
      // Numbers, durations (5m, 1h30m), hex and exponents.
      while (i < expr.length && /[0-9a-zA-Z.+]/.test(expr[i] as string)) {
        if (expr[i] === "+" && !/[eE]/.test(expr[i - 1] as string)) break;
        i++;
      }
    } else if (/[a-zA-Z_:]/.test(c)) {
      const name = ident();
      ws();
      if (LABEL_LISTS.has(name) && expr[i] === "(") {
        const end = expr.indexOf(")", i);
        for (const l of expr.slice(i + 1, end).split(",")) if (l.trim()) labels.add(l.trim());
        i = end + 1;
      } else if (expr[i] === "(" || KEYWORDS.has(name.toLowerCase())) {
        // A function or an aggregation, or an operator keyword.
      } else if (name === "__name__") {
        labels.add(name);
      } else metrics.add(name);
    } else i++;
  }
  return { metrics: [...metrics].sort(), labels: [...labels].sort() };
}

/** What a scrape of `/metrics` exports: metric names (a histogram's series names too) and label names. */
export function exportedNames(text: string): { metrics: Set<string>; labels: Set<string> } {
  const metrics = new Set<string>();
  const labels = new Set<string>();
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      metrics.add(name);
      if (kind === "histogram") for (const s of ["_bucket", "_sum", "_count"]) metrics.add(name + s);
      if (kind === "summary") for (const s of ["_sum", "_count"]) metrics.add(name + s);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} /.exec(line);
    if (sample)
      for (const m of (sample[2] as string).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g))
        labels.add(m[1] as string);
  }
  return { metrics, labels };
}

/** Labels a scrape adds to every series (the ServiceMonitor's `node`, Prometheus's job and instance). */
export const TARGET_LABELS = ["node", "instance", "job"];

/**
 * What is wrong with an expression's names: metric names the daemon does not export, label names no
 * series carries. Empty when it names only what exists.
 */
export function unknownNames(
  expr: string,
  exported: { metrics: Set<string>; labels: Set<string> },
): string[] {
  const { metrics, labels } = promqlNames(expr);
  return [
    ...metrics.filter((m) => !exported.metrics.has(m)).map((m) => `metric ${m}`),
    ...labels
      .filter((l) => !exported.labels.has(l) && !TARGET_LABELS.includes(l) && l !== "__name__")
      .map((l) => `label ${l}`),
  ];
}
