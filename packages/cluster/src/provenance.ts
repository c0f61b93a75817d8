/**
 * What a report must record so that a reader can tell what made its numbers and run it again: the
 * hvlab that ran it (version, git commit, and whether the tree had changes the commit lacks), the
 * Node and machine, the machine's load when the run began and ended (the migration report's
 * numbers moved by 40 % between a quiet and a busy machine), and a hash of the experiment file's
 * bytes as they were read. The migration runner (experiment.ts) and the chaos runner (@hvlab/faults) both put
 * it in results.json and say it in results.md.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpus, hostname, loadavg } from 'node:os';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** hvlab's version: every package's package.json's (the CLI's test checks its own agrees). */
export const HVLAB_VERSION = '0.1.0';

export interface RunEnvironment {
  hvlab: string;
  /** The git commit of the code that ran (null: not run from a git checkout, or git is missing). */
  commit: string | null;
  /** The checkout had changes to tracked files the commit lacks (null: unknown). */
  dirty: boolean | null;
  node: string;
  platform: string;
  cpus: number;
  hostname: string;
  /** 1, 5 and 15-minute load averages when the run began. */
  loadAtStart: [number, number, number];
  /** …and when it ended (null until then). */
  loadAtEnd: [number, number, number] | null;
}

/** The load averages, rounded to two places. */
export function loadNow(): [number, number, number] {
  const [a, b, c] = loadavg();
  const r = (x: number | undefined): number => Number((x ?? 0).toFixed(2));
  return [r(a), r(b), r(c)];
}

/** The git output of `args` in this module's directory (inside the checkout that runs), or null. */
function git(args: string[]): string | null {
  try {
    return execFileSync('git', args, { cwd: dirname(fileURLToPath(import.meta.url)), encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

let cachedCode: { commit: string | null; dirty: boolean | null } | null = null;

/** The commit and the tree's state of the code that runs (asked of git once a process). */
function codeVersion(): { commit: string | null; dirty: boolean | null } {
  if (!cachedCode) {
    const head = git(['rev-parse', '--verify', 'HEAD']);
    const commit = head !== null && /^[0-9a-f]{40,64}$/.test(head) ? head : null;
    const status = commit === null ? null : git(['status', '--porcelain', '--untracked-files=no']);
    cachedCode = { commit, dirty: status === null ? null : status.length > 0 };
  }
  return cachedCode;
}

/** The environment of a run that begins now. */
export function runEnvironment(): RunEnvironment {
  const code = codeVersion();
  return {
    hvlab: HVLAB_VERSION, commit: code.commit, dirty: code.dirty, node: process.version, platform: `${process.platform}-${process.arch}`,
    cpus: cpus().length, hostname: hostname(), loadAtStart: loadNow(), loadAtEnd: null,
  };
}

/**
 * The SHA-256 of an experiment file's bytes as read from disk, in hex: what a report names it by,
 * and what `sha256sum FILE` says. A text (a file parsed from a string) is hashed as its UTF-8
 * bytes. The hash was of the text as decoded, which differs from the file's for bytes that are not
 * UTF-8 (each read as U+FFFD): a report named a file that `sha256sum` did not find.
 */
export function sourceSha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** One line for a report: "hvlab 0.1.0, commit 1a2b3c4d5e6f (with uncommitted changes), node v20.19.0 on linux-x64, 2 CPUs; load 3.8, 3.1, 2.9 at the start, 4.0, 3.3, 3.0 at the end". */
export function environmentText(e: RunEnvironment): string {
  const commit = e.commit === null ? 'commit unknown' : `commit ${e.commit.slice(0, 12)}${e.dirty ? ' (with uncommitted changes)' : ''}`;
  const load = (l: readonly number[]): string => l.join(', ');
  return `hvlab ${e.hvlab}, ${commit}, node ${e.node} on ${e.platform}, ${e.cpus} CPU${e.cpus === 1 ? '' : 's'} (${e.hostname}); `
    + `load (1, 5, 15 min) ${load(e.loadAtStart)} at the start${e.loadAtEnd ? `, ${load(e.loadAtEnd)} at the end` : ''}`;
}
