/**
 * The migrations a host committed as destination, kept on disk (HOME/migrations/committed.json).
 *
 * A source whose commit went unanswered keeps its VM frozen and asks the destination until it
 * answers (vmwp/migrate.ts, "in doubt"). A root that knows the migration answers `committed`; one
 * restarted since (or brought down and up) knew only what its VM configs said: `present` while the
 * migrated VM's config is there, `absent` once it is not. A VM deleted here after its move, or moved
 * on to a third host, then read as `absent`, and the source ran its copy again: the VM came back
 * where it had left. The log says `committed` for as long as it keeps the id (its newest
 * COMMITTED_KEPT), whatever became of the VM since.
 *
 * The id goes on disk after the VM's config and before the commit is answered. A root that dies
 * between the two answers from the config, as before. A write that fails (a full disk) is logged
 * and the id kept in memory: the commit stands, its VM is this host's.
 *
 * The file is read once, at the root's start, by a checking decoder: anything else found there is
 * set aside as `committed.json.bad` (kept for a look) and the log starts empty, so a bad file costs
 * what the log adds, never the root.
 */
import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { MIG_ID_RE } from '@hvlab/protocol';
import { FileShapeError, readRegularFile, writeFileAtomic, type Logger, makeDirs } from '@hvlab/runtime';

/** How many committed migrations the log keeps (the oldest go first). */
export const COMMITTED_KEPT = 1024;
/** The most the file may have: COMMITTED_KEPT entries of the longest fields, with room to spare. */
export const COMMITTED_MAX_BYTES = 1024 * 1024;
const LOG_VERSION = 1;

/** One committed migration. */
export interface CommittedEntry {
  mig: string;
  /** The VM's name and id when it came, and the host it came from. */
  vm: string;
  vmId: string;
  from: string;
  /** When (ms since the epoch). */
  at: number;
}

/** The file's entries, or why it is not a log this module wrote. */
export function decodeCommittedLog(v: unknown): CommittedEntry[] | string {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'it is not an object';
  const o = v as Record<string, unknown>;
  if (o.version !== LOG_VERSION) return `its version is not ${LOG_VERSION}`;
  if (!Array.isArray(o.committed)) return 'its "committed" is not a list';
  if (o.committed.length > COMMITTED_KEPT) return `it lists more than ${COMMITTED_KEPT} migrations`;
  const out: CommittedEntry[] = [];
  for (const [i, e] of o.committed.entries()) {
    if (typeof e !== 'object' || e === null || Array.isArray(e)) return `entry ${i} is not an object`;
    const x = e as Record<string, unknown>;
    const str = (k: string, max: number): string | null => (typeof x[k] === 'string' && (x[k] as string).length > 0 && (x[k] as string).length <= max ? (x[k] as string) : null);
    const mig = str('mig', 64), vm = str('vm', 128), vmId = str('vmId', 64), from = str('from', 128);
    if (mig === null || !MIG_ID_RE.test(mig)) return `entry ${i} has no migration id`;
    if (vm === null || vmId === null || from === null) return `entry ${i} does not name its VM, VM id and source`;
    if (typeof x.at !== 'number' || !Number.isSafeInteger(x.at) || x.at < 0) return `entry ${i} has no time`;
    out.push({ mig, vm, vmId, from, at: x.at });
  }
  return out;
}

export class CommittedMigrations {
  readonly file: string;
  private readonly entries = new Map<string, CommittedEntry>();

  /** `kept`: how many it keeps (COMMITTED_KEPT; fewer in tests). */
  constructor(home: string, private readonly log: Logger, private readonly kept = COMMITTED_KEPT) {
    this.file = join(home, 'migrations', 'committed.json');
    let raw: Buffer | null = null;
    try {
      raw = readRegularFile(this.file, COMMITTED_MAX_BYTES);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      if (!(e instanceof FileShapeError)) {
        log.warn({ file: this.file, err: (e as Error).message }, 'the log of committed migrations cannot be read: it starts empty');
        return;
      }
      this.setAside(e.message);
      return;
    }
    let v: unknown;
    try {
      v = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      this.setAside(`it is not JSON (${(e as Error).message})`);
      return;
    }
    const got = decodeCommittedLog(v);
    if (typeof got === 'string') {
      this.setAside(got);
      return;
    }
    for (const e of got) this.entries.set(e.mig, e);
  }

  has(mig: string): boolean {
    return this.entries.has(mig);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Records a commit; on disk before it returns, unless the disk refuses (then in memory only, logged). */
  add(e: Omit<CommittedEntry, 'at'>): void {
    this.entries.delete(e.mig);
    this.entries.set(e.mig, { ...e, at: Date.now() });
    while (this.entries.size > this.kept) this.entries.delete(this.entries.keys().next().value!);
    try {
      makeDirs(join(this.file, '..'));
      writeFileAtomic(this.file, `${JSON.stringify({ version: LOG_VERSION, committed: [...this.entries.values()] })}\n`, { mode: 0o644 });
    } catch (e2) {
      this.log.warn({ file: this.file, mig: e.mig, err: (e2 as Error).message }, 'the committed migration is not on disk (kept in memory): a restarted root answers for it from the VM\'s config');
    }
  }

  private setAside(why: string): void {
    this.log.warn({ file: this.file, why }, 'the log of committed migrations is not one hvlab wrote: set aside as committed.json.bad, and it starts empty');
    try {
      renameSync(this.file, `${this.file}.bad`);
    } catch { /* a directory or a file that cannot move: left, and rewritten over at the next commit if it can be */ }
  }
}
