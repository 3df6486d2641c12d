import { randomInt } from "node:crypto";

/** Fisher-Yates, in place; returns `items`. Parts in random order, peers in random samples. */
export function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
