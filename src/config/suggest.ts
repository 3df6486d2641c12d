/** "Did you mean …?" for misspelled names: the closest candidate within a few edits, or none. */

/**
 * Edit distance with adjacent transpositions (optimal string alignment), so `CONCURENCY` is one edit
 * from `CONCURRENCY` and `PRAT` one from `PART`. Names here are short; the O(a·b) table is fine.
 */
export function editDistance(a: string, b: string): number {
  const width = b.length + 1;
  // Row-major (a.length + 1) × (b.length + 1) table; d(i, j) is the distance of a[0, i) to b[0, j).
  const table = new Array<number>((a.length + 1) * width).fill(0);
  const d = (i: number, j: number) => table[i * width + j] ?? 0;
  for (let i = 0; i <= a.length; i++) table[i * width] = i;
  for (let j = 0; j <= b.length; j++) table[j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, d(i - 2, j - 2) + 1);
      }
      table[i * width + j] = best;
    }
  }
  return d(a.length, b.length);
}

/**
 * The value of the candidate spelled closest to `word`: at most 3 edits and fewer than 40% of the
 * candidate's length, so that short unrelated names never match (commander, for flags, allows 60%).
 * Candidates map a spelling to what to suggest, so that several spellings can point at one name.
 */
export function closest(
  word: string,
  candidates: Iterable<[spelling: string, suggestion: string]>,
): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const [spelling, suggestion] of candidates) {
    const distance = editDistance(word, spelling);
    if (distance < bestDistance && distance <= 3 && distance < spelling.length * 0.4) {
      best = suggestion;
      bestDistance = distance;
    }
  }
  return best;
}
