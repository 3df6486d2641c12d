import type { Logger } from "pino";

/** What a closer is told: how long running work may take to finish, and whether to hurry. */
export interface StopContext {
  /** Running staging jobs get this long to finish (0 on a failed start). */
  graceMs: number;
  /** Aborted by a second SIGTERM: skip the wait. */
  hurry?: AbortSignal | undefined;
}

type Closer = (ctx: StopContext) => unknown;

/**
 * One stack of closers for the daemon, as spegel's context and errgroup or fastify's onClose: each
 * component registers how to stop as it starts, and a failed start or a shutdown runs them in
 * reverse, each once. A closer that fails is logged and the rest still run, so one stuck component
 * never keeps the others open. Registering where a component starts is what keeps the order right:
 * what started last stops first.
 */
export class Lifecycle {
  readonly #closers: { name: string; close: Closer }[] = [];
  readonly #log: Logger;
  #closing: Promise<void> | undefined;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Registers how to stop `name`; returns `value`, so a start reads `const x = life.add(...)`. */
  add<T>(name: string, value: T, close: (value: T, ctx: StopContext) => unknown): T {
    this.#closers.push({ name, close: (ctx) => close(value, ctx) });
    return value;
  }

  /** Registers a closer with nothing to hand back (a timer, a restore). */
  defer(name: string, close: Closer): void {
    this.#closers.push({ name, close });
  }

  /** Runs every closer in reverse order of registration; a second call waits for the first. */
  close(ctx: StopContext): Promise<void> {
    this.#closing ??= (async () => {
      for (const { name, close } of this.#closers.splice(0).reverse()) {
        try {
          await close(ctx);
        } catch (err) {
          this.#log.error({ component: name, err: String(err) }, "stopping a component failed");
        }
      }
    })();
    return this.#closing;
  }
}
