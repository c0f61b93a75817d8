/** mulberry32: a small seeded generator in [0, 1), so whatever draws from it repeats from its seed (fault schedules, fuzz tests). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The largest seed: a seed is 32 bits (the generator takes `seed >>> 0`, so 2^32 would draw as 0). */
export const SEED_MAX = 0xffffffff;

/**
 * A seed as written in a file (an experiment's `seed`, a fault's) or on a command line (`--seed`):
 * decimal digits (`16`) or `0x` and hex digits (`0x10`), from 0 to SEED_MAX; null for anything
 * else. The one parser of both: a file's `seed: 0x10` (YAML's hex) was taken and `--seed 0x10`
 * refused, and a file took `1e3` and `16.0` (YAML numbers of whole value) too.
 */
export function parseSeed(text: string): number | null {
  if (typeof text !== 'string' || text.length > 64) return null;
  const n = /^[0-9]+$/.test(text) ? Number(text) : /^0[xX][0-9a-fA-F]+$/.test(text) ? Number.parseInt(text.slice(2), 16) : null;
  return n !== null && n <= SEED_MAX ? n : null;
}

/** Why `written` (the value as it was written, or "nothing", "a list") is not a seed: the one sentence of a file's problem and of `--seed`. */
export function seedProblem(written: string): string {
  return `must be a whole number from 0 to ${SEED_MAX}, in decimal or 0x-hex (16 or 0x10), not ${written.length > 40 ? `${written.slice(0, 39)}…` : written}`;
}
