/**
 * A bit flip's address and its landing in several VMs, as the nemesis decides them (the worker
 * flips: flipGuestByte): without a GPA, one drawn from the seed inside every target VM's guest RAM
 * (`bitflipDefault`). A flip cannot be undone, so a fault on several VMs is checked against each
 * VM's memory its root lists before any VM is flipped (`bitflipTargetsProblem`; without a GPA, a
 * VM whose memory is not known is refused: `bitflipDefaultPages`), and one that fails part-way all
 * the same (a VM stopped or moved meanwhile, a page still to come in a post-copy, a root that did
 * not say its VM's memory of a flip given --gpa) says which VMs it flipped (`flipEach`).
 */
import { bitflipGpaProblem, dirtyBitmapGpa, seededRandom, WORKLOAD_DATA_GPA } from '@hvlab/protocol';

/** Pages of workload data (memdirty's first 256, from WORKLOAD_DATA_GPA) a flip without a GPA picks from. */
export const BITFLIP_DEFAULT_PAGES = 256;

/** A VM a bit flip targets: its name and host, how it is named in a sentence, and its memory (null: its root did not say). */
export interface BitflipTarget {
  vm: string;
  host: string;
  where: string;
  memoryBytes: number | null;
  /**
   * Why its memory is not known (memoryBytes null): its root did not answer in time
   * ('unanswered', the default), or answered without listing it ('unlisted': moved away, or
   * listed with no memory).
   */
  memoryUnknown?: 'unanswered' | 'unlisted';
}

/**
 * How long the nemesis waits for a target's root to list its VMs before a bit flip (vmList; a
 * root may wait up to 2 s for each of its workers, so a loaded machine needs more than a few).
 */
export const BITFLIP_MEMORY_TIMEOUT_MS = 10_000;

/** Pages of workload data a VM of `memoryBytes` has below its dirty bitmap (its guest RAM's top). */
export function workloadDataPages(memoryBytes: number): number {
  return Math.max(0, Math.floor((dirtyBitmapGpa(memoryBytes) - WORKLOAD_DATA_GPA) / 4096));
}

/**
 * The GPA and mask of a flip given without a GPA, drawn from `seed`: the first byte of one of the
 * first BITFLIP_DEFAULT_PAGES pages of workload data, and (without `mask`) a bit other than the
 * lowest (a flip of bit 0 could look like memdirty's own one-less step). `pages` is how many of
 * those pages every target VM has (workloadDataPages; null when no VM's memory is known).
 *
 * The page is drawn as it always was (floor(r * 256)), and drawn again from the `pages` there are
 * only when that one is past them (a 2M VM has 255: its top page holds the dirty bitmap), so every
 * seed that picked a page inside a VM picks the same page and bit as before (a report's rerun with
 * its seed gives the same fault), and the second draw makes each of the `pages` equally likely.
 */
export function bitflipDefault(seed: number, mask: number | undefined, pages: number | null): { gpa: number; mask: number } {
  const n = Math.min(BITFLIP_DEFAULT_PAGES, pages ?? BITFLIP_DEFAULT_PAGES);
  const rnd = seededRandom(seed);
  let page = Math.floor(rnd() * BITFLIP_DEFAULT_PAGES);
  if (page >= n) page = Math.floor(rnd() * n);
  return { gpa: WORKLOAD_DATA_GPA + page * 4096, mask: mask ?? 1 << (1 + Math.floor(rnd() * 7)) };
}

/**
 * Why a flip at `gpa` cannot land in every one of `targets`, or null: the first VM (smallest
 * memory first) whose guest RAM does not hold it, said as its worker says it, and, for several,
 * that none was flipped. A VM whose memory is unknown is left to its worker.
 */
export function bitflipTargetsProblem(gpa: number, targets: readonly BitflipTarget[]): string | null {
  const known = targets.filter((t): t is BitflipTarget & { memoryBytes: number } => t.memoryBytes !== null);
  known.sort((a, b) => a.memoryBytes - b.memoryBytes || (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
  for (const t of known) {
    const p = bitflipGpaProblem(gpa, t.vm, t.memoryBytes);
    if (p !== null) return targets.length > 1 ? `${p}; no VM was flipped` : p;
  }
  return null;
}

/**
 * The pages of workload data a default flip may pick in every one of `targets` (the least of
 * them, at most BITFLIP_DEFAULT_PAGES). A target whose memory is not known (its root did not answer in time, or answered without listing it) is refused, naming
 * it: the page drawn depends on every target's memory (a 2M VM's draw differs for 1 seed in 256),
 * so a draw without it would not be the fault a rerun with that seed makes. A VM with no page (it
 * cannot be: MIN_MEMORY_BYTES leaves a 2M VM 255) is said too.
 */
export function bitflipDefaultPages(targets: readonly BitflipTarget[]): { pages: number } | { problem: string } {
  const unknown = targets.filter((t) => t.memoryBytes === null);
  if (unknown.length > 0) {
    const list = (of: readonly BitflipTarget[]): string => {
      const w = of.map((t) => t.where);
      const named = w.length <= 3 ? w : [...w.slice(0, 3), `${w.length - 3} more`];
      return named.length === 1 ? named[0]! : `${named.slice(0, -1).join(', ')} and ${named.at(-1)!}`;
    };
    const unanswered = unknown.filter((t) => t.memoryUnknown !== 'unlisted');
    const unlisted = unknown.filter((t) => t.memoryUnknown === 'unlisted');
    const parts = [
      ...(unanswered.length > 0 ? [`${list(unanswered)} (${unanswered.length === 1 ? 'its root' : 'their roots'} did not answer in time)`] : []),
      ...(unlisted.length > 0 ? [`${list(unlisted)} (${unlisted.length === 1 ? 'its root answered but did not list it' : 'their roots answered but did not list them'}: moved away, or no memory given)`] : []),
    ];
    return { problem: `bitflip without --gpa: the memory of ${parts[0]!} is not known${parts.length > 1 ? `, nor that of ${parts[1]!}` : ''}, and the GPA drawn from the seed depends on it; no VM was flipped: try again, or give --gpa` };
  }
  let pages = BITFLIP_DEFAULT_PAGES;
  for (const t of targets) {
    const n = workloadDataPages(t.memoryBytes!);
    if (n < 1) return { problem: `${t.where} has no guest RAM from 0x${WORKLOAD_DATA_GPA.toString(16)} for a bit flip's default GPA: give --gpa` };
    pages = Math.min(pages, n);
  }
  return { pages };
}

/**
 * Flips in each of `targets` in turn (`flip`), each answer put in `effects` by VM as it lands (a
 * refusal by the first leaves it empty: nothing took effect). A failure after one landed is
 * thrown as a FlipPartlyLanded that says which VMs were flipped (a flip cannot be undone);
 * before any landed, as it came.
 */
export async function flipEach(targets: readonly BitflipTarget[], effects: Record<string, unknown>, flip: (t: BitflipTarget) => Promise<unknown>): Promise<void> {
  const flipped: string[] = [];
  for (const t of targets) {
    try {
      effects[t.vm] = await flip(t);
    } catch (e) {
      if (flipped.length === 0) throw e;
      throw new FlipPartlyLanded(e instanceof Error ? e.message : String(e), flipped, targets.length);
    }
    flipped.push(t.where);
  }
}

/** A flip of several VMs that failed after some of them were flipped: which (`flipped`), and why the next failed. */
export class FlipPartlyLanded extends Error {
  override name = 'FlipPartlyLanded';
  constructor(readonly reason: string, readonly flipped: readonly string[], of: number) {
    super(`${reason}; ${flipped.length} of the ${of} VMs ${flipped.length === 1 ? 'was' : 'were'} flipped already, and keep${flipped.length === 1 ? 's' : ''} the flip: ${flipped.join(', ')}`);
  }
}
