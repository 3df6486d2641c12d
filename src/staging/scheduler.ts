/** Whose task it is: tasks of one owner run in FIFO order; owners compete by priority. */
export interface TaskOwner {
  /** Read each time a slot frees, so raising it takes effect for tasks already queued. */
  readonly priority: number;
}

interface Waiting {
  task: () => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/**
 * The one download budget: at most `concurrency` tasks (ranged GETs, HEADs) run at once across every
 * job. When a slot frees, the owner with the highest priority goes next (ties: the one waiting
 * longest), so a model a pod is waiting for overtakes background prefetches, even mid-job.
 */
export class SlotScheduler {
  readonly concurrency: number;
  #running = 0;
  readonly #queues = new Map<TaskOwner, Waiting[]>();

  constructor(concurrency: number) {
    this.concurrency = concurrency;
  }

  run<T>(owner: TaskOwner, task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const q = this.#queues.get(owner) ?? [];
      q.push({ task, resolve: resolve as (v: unknown) => void, reject });
      this.#queues.set(owner, q);
      this.#dispatch();
    });
  }

  /** Rejects every task of `owner` still waiting for a slot (an aborted job settles at once). */
  cancel(owner: TaskOwner, reason: unknown): void {
    const q = this.#queues.get(owner);
    this.#queues.delete(owner);
    for (const w of q ?? []) w.reject(reason);
  }

  /** Tasks waiting for a slot (for metrics and tests). */
  get queued(): number {
    let n = 0;
    for (const q of this.#queues.values()) n += q.length;
    return n;
  }

  get running(): number {
    return this.#running;
  }

  #dispatch(): void {
    while (this.#running < this.concurrency && this.#queues.size > 0) {
      let best: TaskOwner | undefined;
      // Map order is insertion order, so among equal priorities the earliest owner wins.
      for (const owner of this.#queues.keys()) if (!best || owner.priority > best.priority) best = owner;
      const q = this.#queues.get(best as TaskOwner) as Waiting[];
      const next = q.shift() as Waiting;
      if (q.length === 0) this.#queues.delete(best as TaskOwner);
      this.#running++;
      // Through a promise, so a task that throws synchronously still frees its slot.
      Promise.resolve()
        .then(next.task)
        .then(next.resolve, next.reject)
        .finally(() => {
          this.#running--;
          this.#dispatch();
        });
    }
  }
}
