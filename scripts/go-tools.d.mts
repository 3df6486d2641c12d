// Types of scripts/go-tools.mjs for the tests that import it (test/support/go-tools.ts).
export interface GoToolBuild {
  cmd: string[];
  cwd: string;
  env: Record<string, string>;
}
export const GO_TOOLS: Record<
  string,
  { version(): string; build(bin: string): GoToolBuild; timeoutMs?: number }
>;
export function goToolsCache(env?: NodeJS.ProcessEnv): string;
export function goToolPath(name: string, env?: NodeJS.ProcessEnv): string;
