/**
 * The warm pool: booted VMs without an owner, as Firecracker restores a snapshot instead of
 * booting. Each worker is a VMWP that builds a partition of the pool's shape (memory, VPs,
 * devices: `hvlab up --warm N --warm-memory SIZE`), boots its guest with nothing to run (the CMOS
 * read, the VP threads, VMBus negotiated and every channel open), and waits. `vm start` of a VM of
 * that shape claims one (vmms.ts): the worker and its guest take the VM's name, workload and
 * processor settings, and the VM is Running without a boot. A VM of another shape starts cold.
 * The pool refills behind a claim, once claims pause.
 *
 * What a claimed VM keeps of its template: its memory's boot-time contents (the same as any boot
 * of that shape), its device instance ids (derived from the template's seed, which the VM's config
 * takes, so saves and moves keep them) and its reference time, which counts from the template's
 * boot (a KVP uptime includes the wait in the pool).
 *
 * A warm worker's stdin is a pipe from this root: it carries the first line (template config,
 * ticket, secret) at once and the claim later. When the root dies the worker reads end-of-file and
 * leaves, deleting its partition; the restarted root deletes what is left (orphaned partitions)
 * and starts a new pool. A worker that dies while waiting has its partition deleted here.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spawnVmwp } from './worker-spawn.js';
import { EAGER_COMPILE_ENV } from '@hvlab/runtime';
import { sameShape, type VmwpConfig, type VmwpStartInput } from './vmwp/shared.js';

export const MAX_WARM = 64;
/**
 * How long the pool waits after a claim before it starts a replacement (ms), restarted by every
 * claim. A replacement loads two processes' code and boots a guest (~0.5 s of CPU); started at
 * once, it would run beside the very start that claimed its predecessor on this 2-core machine.
 */
export const REFILL_DELAY_MS = 300;
/** A line a worker writes on stdout is at most this long; longer ones are not the pool's. */
const MAX_LINE = 64;

export interface WarmPoolOptions {
  size: number;
  /** The config every worker boots; its name and id are each worker's own (see `fill`). */
  shape: VmwpConfig;
  /** A one-time ticket for a worker's root-partition hypervisor session. */
  ticket: () => Promise<string>;
  /** The control link endpoint of a worker whose template has this id. */
  endpoint: (id: string) => string;
  /** Deletes a partition whose worker died unclaimed. */
  deletePartition: (partitionId: number) => Promise<void>;
  /** The host's stderr log (a file descriptor is opened per worker). */
  stderrLog: string;
  /** The host's log directory: a template that dies unclaimed takes its two log files along. */
  logDir: string;
  /** The hypervisor's socket, which a waiting worker and its partition process connect to ahead of need. */
  hvEndpoint: string;
  log: { warn: (o: object, m?: string) => void; info: (o: object, m?: string) => void };
}

/** What a worker says on stdout: its partition's id once made, and "ready" once its guest booted. */
export type WarmEvent = { t: 'partition'; id: number } | { t: 'ready' };

/**
 * Reads a warm worker's stdout lines (`partition N`, `ready`). Anything else a worker writes, of
 * any length, is ignored and never makes the kept text grow past MAX_LINE.
 */
export class WarmLines {
  private line = '';
  private overlong = false;

  feed(chunk: Uint8Array): WarmEvent[] {
    const out: WarmEvent[] = [];
    const text = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('latin1');
    let at = 0;
    for (;;) {
      const nl = text.indexOf('\n', at);
      const part = text.slice(at, nl < 0 ? text.length : nl);
      if (!this.overlong) {
        this.line += part;
        if (this.line.length > MAX_LINE) {
          this.overlong = true;
          this.line = '';
        }
      }
      if (nl < 0) break;
      if (!this.overlong) {
        const m = /^partition ([1-9]\d{0,9})$/.exec(this.line);
        // A child's id: 2 and up (1 is the root partition).
        if (this.line === 'ready') out.push({ t: 'ready' });
        else if (m && Number(m[1]) >= 2 && Number(m[1]) <= 0x7fffffff) out.push({ t: 'partition', id: Number(m[1]) });
      }
      this.line = '';
      this.overlong = false;
      at = nl + 1;
    }
    return out;
  }
}

/** A worker of the pool: its process, template id (the device instance seed), control link and secret. */
export interface WarmWorker {
  child: ChildProcess;
  seed: string;
  secret: string;
  endpoint: string;
  /** Its partition, once it has said which (it goes on saying after a claim: see onPartition). */
  partitionId: number | null;
  /** Its first line (the template) is written: only then may a claim follow it. */
  started: boolean;
  booted: boolean;
  /** Told the partition id if it comes after the worker was taken (the VM then owns the partition). */
  onPartition: ((id: number) => void) | null;
}

export class WarmPool {
  private readonly waiting: WarmWorker[] = [];
  private closed = false;
  private refill: NodeJS.Timeout | null = null;
  /** Workers that died while waiting, in a row: past a few the pool stops refilling (something is broken). */
  private failures = 0;
  readonly stats = { started: 0, claimed: 0, died: 0 };

  constructor(private readonly o: WarmPoolOptions) {
    this.fill();
  }

  get size(): number {
    return this.waiting.length;
  }

  get shape(): VmwpConfig {
    return this.o.shape;
  }

  /** The waiting workers, each with whether its guest has booted. */
  get workers(): Array<{ pid: number; booted: boolean }> {
    return this.waiting.filter((w) => (w.child.pid ?? 0) > 0).map((w) => ({ pid: w.child.pid!, booted: w.booted }));
  }

  /**
   * A worker for a VM of `cfg` (taken out of the pool), or null when the VM is not of the pool's
   * shape or none is waiting. A booted one first; one still booting is still ahead of a cold start.
   */
  take(cfg: VmwpConfig): WarmWorker | null {
    if (!sameShape(cfg, this.o.shape)) return null;
    const i = this.waiting.findIndex((w) => w.booted);
    if (i > 0) this.waiting.unshift(...this.waiting.splice(i, 1));
    for (let k = 0; k < this.waiting.length; k++) {
      const w = this.waiting[k]!;
      // Not yet given its template (a ticket is on its way): a claim must not become its first line.
      if (!w.started) continue;
      this.waiting.splice(k--, 1);
      if (w.child.exitCode !== null || w.child.signalCode !== null || !w.child.stdin?.writable) continue;
      // Its partition is the VM's from now on: the root deletes it if the worker dies (vmms.ts).
      w.child.removeAllListeners('exit');
      this.stats.claimed++;
      this.failures = 0;
      this.fillLater();
      return w;
    }
    this.fillLater();
    return null;
  }

  /** Refills once claims have paused for REFILL_DELAY_MS. */
  private fillLater(): void {
    if (this.refill) clearTimeout(this.refill);
    this.refill = setTimeout(() => {
      this.refill = null;
      this.fill();
    }, REFILL_DELAY_MS);
    this.refill.unref();
  }

  private fill(): void {
    while (!this.closed && this.failures < 5 && this.waiting.length < this.o.size) {
      const seed = randomUUID();
      let c: ChildProcess;
      try {
        c = spawnVmwp({ stderrLog: this.o.stderrLog, hvEndpoint: this.o.hvEndpoint, stdout: 'pipe', env: { HVLAB_VMWP_WARM: '1', [EAGER_COMPILE_ENV]: '1' } });
      } catch (e) {
        this.failures = 5;
        this.o.log.warn({ err: (e as Error).message }, 'could not start a warm VM worker; the pool stays empty');
        return;
      }
      const w: WarmWorker = { child: c, seed, secret: randomBytes(24).toString('hex'), endpoint: this.o.endpoint(seed), partitionId: null, started: false, booted: false, onPartition: null };
      c.stdin!.on('error', () => undefined);
      c.on('error', () => undefined);
      const out = c.stdout!;
      out.on('error', () => undefined);
      const lines = new WarmLines();
      out.on('data', (b: Buffer) => {
        for (const ev of lines.feed(b)) {
          if (ev.t === 'partition' && w.partitionId === null) {
            w.partitionId = ev.id;
            w.onPartition?.(ev.id);
          } else if (ev.t === 'ready') {
            w.booted = true;
            // A worker that booted proves the pool works: deaths before it were not in a row.
            this.failures = 0;
          }
        }
      });
      this.stats.started++;
      c.once('exit', (code, signal) => {
        if (w.partitionId !== null) void this.o.deletePartition(w.partitionId).catch(() => undefined);
        removeTemplateLogs(this.o.logDir, seed);
        const i = this.waiting.indexOf(w);
        if (i < 0) return;
        this.waiting.splice(i, 1);
        this.stats.died++;
        this.failures++;
        this.o.log.warn({ pid: c.pid, code, signal }, 'a warm VM worker died while waiting');
        if (!this.closed) setTimeout(() => this.fill(), 200 * this.failures).unref();
      });
      this.waiting.push(w);
      // Its first line: the template (a name no VM can have, `~`, and the seed as its id).
      void this.o.ticket().then(
        (ticket) => {
          if (!this.waiting.includes(w)) return;
          const first: VmwpStartInput = { config: { ...this.o.shape, name: templateName(seed), id: seed }, ticket, secret: w.secret, template: true };
          c.stdin!.write(JSON.stringify(first) + '\n');
          w.started = true;
        },
        (e: unknown) => {
          this.o.log.warn({ err: (e as Error).message }, 'no ticket for a warm VM worker');
          // Never taken (it had no first line): nobody else holds it.
          if (this.waiting.includes(w)) c.kill('SIGKILL');
        },
      );
    }
  }

  /** Ends every waiting worker (their partition processes follow when their pipes close). */
  close(): void {
    this.closed = true;
    if (this.refill) clearTimeout(this.refill);
    this.refill = null;
    for (const w of this.waiting.splice(0)) {
      try { w.child.kill('SIGKILL'); } catch { /* gone */ }
      // Now: the root may be gone before the exit event comes.
      removeTemplateLogs(this.o.logDir, w.seed);
    }
  }
}

/** A template's name: `~warm-` and the first 8 hex digits of its seed (no VM name can start with `~`). */
export function templateName(seed: string): string {
  return `~warm-${seed.slice(0, 8)}`;
}

const TEMPLATE_LOG_RE = /^(?:vmwp|partition)-~warm-[0-9a-f]{8}\.log$/;

/** Removes the two log files of the template of `seed` (a claim renames them to the VM's first). */
function removeTemplateLogs(logDir: string, seed: string): void {
  for (const role of ['vmwp', 'partition']) rmSync(join(logDir, `${role}-${templateName(seed)}.log`), { force: true });
}

/**
 * Removes the log files of every template (a root starting: its predecessor's waiting workers left
 * with it, unclaimed, and their files stayed; each `up --warm N` added N pairs). Returns how many.
 */
export function sweepTemplateLogs(logDir: string): number {
  let n = 0;
  let names: string[] = [];
  try {
    names = readdirSync(logDir);
  } catch {
    return 0;
  }
  for (const f of names) {
    if (!TEMPLATE_LOG_RE.test(f)) continue;
    rmSync(join(logDir, f), { force: true });
    n++;
  }
  return n;
}
