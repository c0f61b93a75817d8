/**
 * A host's own faults (faults.ts `HostFaultSpec` kinds that are not a VM's): lp-shrink, which the
 * hypervisor enforces (it holds the deadline too, so the LPs come back even if this root dies).
 * One at a time: a second lp-shrink replaces the first. The root keeps the record so that
 * `faultList` shows it and `faultClear` can end it early.
 */
import { MgmtFailure } from './config.js';

export interface HostFaultRecord {
  id: string;
  kind: 'lp-shrink';
  lps: number;
  startedAt: number;
  endsAt: number;
}

export class HostFaults {
  private current: (HostFaultRecord & { timer: NodeJS.Timeout }) | null = null;

  /** `setLps(lps, forMs)` asks the hypervisor; `bootLps` is what the host started with. */
  constructor(private readonly setLps: (lps: number, forMs: number) => Promise<unknown>, private readonly bootLps: number, private readonly log: (msg: string, fields: Record<string, unknown>) => void) {}

  async set(id: string, lps: number, forMs: number): Promise<unknown> {
    if (lps >= this.bootLps) throw new MgmtFailure('InvalidArgument', `lp-shrink to ${lps} takes nothing away: this host has ${this.bootLps} LP${this.bootLps === 1 ? '' : 's'}`);
    const r = await this.setLps(lps, forMs);
    if (this.current) clearTimeout(this.current.timer);
    const now = Date.now();
    const timer = setTimeout(() => {
      if (this.current?.id === id) this.current = null;
    }, forMs);
    timer.unref();
    this.current = { id, kind: 'lp-shrink', lps, startedAt: now, endsAt: now + forMs, timer };
    this.log('fault injected', { fault: id, kind: 'lp-shrink', lps, forMs, bootLps: this.bootLps });
    return { id, kind: 'lp-shrink', lps, bootLps: this.bootLps, endsAt: now + forMs, hypervisor: r };
  }

  /** Ends the host's fault (if `id` is null or its id); resolves with the ids ended. */
  async clear(id: string | null): Promise<string[]> {
    const c = this.current;
    if (!c) {
      // A root that restarted has no record of a shrink the hypervisor still holds: give every
      // LP back anyway (harmless when none is taken).
      await this.setLps(this.bootLps, 0).catch(() => undefined);
      return [];
    }
    if (id !== null && c.id !== id) return [];
    clearTimeout(c.timer);
    this.current = null;
    await this.setLps(this.bootLps, 0);
    this.log('fault cleared', { fault: c.id, kind: c.kind });
    return [c.id];
  }

  list(): HostFaultRecord[] {
    if (!this.current) return [];
    const { timer: _t, ...rec } = this.current;
    return [rec];
  }
}
