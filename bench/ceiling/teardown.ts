/**
 * One place owns what the ceiling bench sets up (the tmpfs, nginx, the contender running): each step
 * registers how to undo itself as it starts, and every way out (return, throw, SIGINT, SIGTERM) runs
 * those steps once, newest first. Steps are synchronous so a signal handler can finish them before
 * the process exits.
 */
export class Teardown {
  readonly #steps: { what: string; undo: () => void }[] = [];
  #done = false;

  /** Registers how to undo something just set up; undone before everything registered earlier. */
  add(what: string, undo: () => void): void {
    this.#steps.push({ what, undo });
  }

  /** Undoes every step, newest first; a step that fails is reported and the rest still run. Idempotent. */
  run(): void {
    if (this.#done) return;
    this.#done = true;
    for (const { what, undo } of this.#steps.reverse()) {
      try {
        undo();
      } catch (err) {
        process.stderr.write(`ceiling: teardown: ${what}: ${(err as Error).message}\n`);
      }
    }
  }
}

/** Runs `fn` with a teardown that runs on every way out, signals included. */
export async function withTeardown<T>(fn: (t: Teardown) => Promise<T>): Promise<T> {
  const t = new Teardown();
  // A terminal's ^C reaches every process of the group (npm, tsx, this one): the handlers stay
  // installed until exit, so a second signal cannot cut the teardown short.
  let leaving = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (leaving) return;
    leaving = true;
    t.run();
    process.stderr.write(`ceiling: ${sig}: nginx stopped, tmpfs unmounted\n`);
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await fn(t);
  } finally {
    t.run();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
