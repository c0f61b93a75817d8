/**
 * A VM's faults, enforced by its worker (VMWP) — the VM end of the fault API (ARCHITECTURE §9,
 * protocol/src/faults.ts). The root hands each fault over with its remaining time (`faultSet`);
 * this table applies it at once, holds its deadline and undoes it by itself when the time is up,
 * so a fault ends even when whoever asked for it is gone. It ends early on `faultClear`, and all
 * of them end before a save or a live migration (a fault does not travel with a VM: the
 * destination's worker starts clean, and the moved VM is not left with a fault nobody undoes);
 * while a VM is being moved, `faultSet` is refused. Faults die with the worker (the VM is gone
 * then anyway: nothing of them lives outside this process and its partition).
 *
 *   vmbus            the VM's VMBus fault injector (vmbus/src/faults.ts) on the channel named (or
 *                    all); undone by taking it off, which releases what it held
 *   interrupt-delay  partition property FaultInterruptDelayUs; 0 at the end
 *   clock            FaultClockOffsetUs and FaultClockSkewPpm; both 0 at the end, then a time
 *                    sync (`clockRestored`): time sync set the guest's clock right against the
 *                    faulty reference time, so when that steps back the clock would be off by
 *                    minus the fault until the next sample
 *   vp-stall         FaultStalledVps (a mask of VP indexes); 0 at the end
 *   bitflip          XORs the mask into one guest byte, at once, with the VPs stopped for that
 *                    moment; nothing is undone (its duration is the window a checker is given)
 * Interrupt delay, clock and VP stall are one partition setting each, so a VM has at most one
 * fault of each of those kinds: a second one replaces the first (which is reported ended).
 *
 * Steps run one at a time (a set, a clear, an expiry), so an expiry never races the set that
 * replaces its fault. Each fault that ends is reported to the root in a `faultEnded` note.
 */
import {
  bitflipGpaProblem, FAULT_STALL_MAX_VP, HvStatus, PartitionProperty, type VmFaultKind, type VmFaultSpec, type VmwpFaultApplied, type VmwpFaultInfo, type VmwpFaultStats, type VmwpNote,
} from '@hvlab/protocol';
import { HypercallError, VmwpFailure } from '@hvlab/runtime';
import { VmbusFault, type VmbusFaultInjector } from '@hvlab/vmbus';

/** Most faults active at once on one VM. */
export const MAX_VM_FAULTS = 32;

/** The kinds that are one partition setting each: one fault of each at a time. */
const EXCLUSIVE_KINDS: readonly VmFaultKind[] = ['interrupt-delay', 'clock', 'vp-stall'];

/** The hypervisor's fault properties (protocol/src/hypercall.ts). */
type FaultPropertyName = 'FaultInterruptDelayUs' | 'FaultStalledVps' | 'FaultClockOffsetUs' | 'FaultClockSkewPpm';
const faultProperty = (name: FaultPropertyName): number => PartitionProperty[name];

/**
 * Runs `apply` with every VP of the VM stopped at a step boundary and resolves with its result; a
 * VM that was stopped already stays so, one that ran runs again afterwards (even when `apply` throws).
 */
export type WhileStopped = <T>(apply: () => T) => Promise<T>;

/**
 * XORs `mask` into the byte at `gpa` of guest memory `mem`, only in guest RAM (below the dirty
 * bitmap at the top of the `guest.memoryBytes`: its pages are no RAM; a GPA outside is refused
 * naming the VM, its memory and the GPAs it takes) and only in a page that is there (`missing`: post-copy has
 * not brought it yet, and a flip there would be overwritten when it arrives). Bad input is refused
 * before anything stops.
 *
 * The flip lands while the VPs stand still (`stopped`), as a fault between two instructions: a
 * guest's read-modify-write of that byte in flight (memdirty's `inc byte [gpa]`, GuestMemory.add8)
 * would otherwise store its stale sum over the flip, and the flip would be lost although it was
 * reported applied. With threads doing what memdirty does, an unstopped flip of a page's first
 * byte was lost about once in 1500 (3 of 4640); CI saw one planted bitflip that the memory check
 * then could not find. The XOR itself is atomic, so a write from another thread that does not
 * stop (a VSP's ring write) cannot lose it either.
 */
export async function flipGuestByte(
  mem: SharedArrayBuffer | null, guest: { vm: string; memoryBytes: number }, gpa: number, mask: number, missing: (pfn: number) => boolean,
  stopped: WhileStopped = async (apply) => apply(),
): Promise<{ before: number; after: number }> {
  const outside = bitflipGpaProblem(gpa, guest.vm, guest.memoryBytes);
  if (outside !== null) throw new VmwpFailure('InvalidArgument', outside);
  if (!Number.isInteger(mask) || mask < 1 || mask > 255) throw new VmwpFailure('InvalidArgument', `a bit mask is 1 to 255, not ${mask}`);
  if (!mem) throw new VmwpFailure('InvalidState', 'flipping guest bits needs shared memory (this host runs on process-private memory)');
  const pfn = Math.floor(gpa / 4096);
  if (missing(pfn)) throw new VmwpFailure('Unavailable', `page 0x${pfn.toString(16)} has not arrived yet (post-copy in progress)`);
  const bytes = new Uint8Array(mem);
  const before = await stopped(() => Atomics.xor(bytes, gpa, mask));
  return { before, after: before ^ mask };
}

/** What the table needs of its worker. */
export interface VmFaultHost {
  vm: string;
  /** The VM's VP count (vp-stall with `vps: null` stalls them all). */
  vps: number;
  /** Sets a partition property of the VM (SetPartitionProperty); throws when refused. */
  setProperty(property: number, value: number): Promise<void>;
  /**
   * The guest's reference time is true again (a clock fault ended): steps the guest's clock to
   * host time (time sync) and resolves when that is done or given up on; never rejects.
   */
  clockRestored?(): Promise<void>;
  /** XORs `mask` into the guest byte at `gpa`: the byte before and after; throws a VmwpFailure when it cannot. */
  flipByte(gpa: number, mask: number): Promise<{ before: number; after: number }>;
  /** The VM's VMBus fault injector and its channel names, or null before its devices exist. */
  vmbus(): { injector: VmbusFaultInjector; names: string[] } | null;
  /** Why no fault can be set now (e.g. a migration runs), or null. */
  refusal(): string | null;
  note(n: VmwpNote): void;
  log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}

interface ActiveFault {
  id: string;
  spec: VmFaultSpec;
  startedAt: number;
  endsAt: number;
  channels: string[];
  applied: Record<string, unknown>;
  vmbus: VmbusFault | null;
  timer: NodeJS.Timeout | null;
}

const failure = (e: unknown, what: string): VmwpFailure =>
  e instanceof VmwpFailure ? e : new VmwpFailure('Unavailable', `${what}: ${(e as Error).message ?? String(e)}`);

export class VmFaultTable {
  private readonly active = new Map<string, ActiveFault>();
  private chain: Promise<unknown> = Promise.resolve();
  private disposed = false;

  constructor(private readonly host: VmFaultHost) {}

  /** Runs `fn` after every step before it (set, clear, expiry). */
  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  get size(): number {
    return this.active.size;
  }

  /** Applies fault `id` now for `forMs` (checked by the request decoder); answers what was applied. */
  set(id: string, spec: VmFaultSpec, forMs: number): Promise<VmwpFaultApplied> {
    return this.serialize(() => this.setNow(id, spec, forMs));
  }

  private async setNow(id: string, spec: VmFaultSpec, forMs: number): Promise<VmwpFaultApplied> {
    const h = this.host;
    if (this.disposed) throw new VmwpFailure('InvalidState', `VM "${h.vm}" is going away`);
    const refusal = h.refusal();
    if (refusal !== null) throw new VmwpFailure('InvalidState', `no fault can be set on VM "${h.vm}" now: ${refusal}`);
    const old = this.active.get(id) ?? null;
    const rival = EXCLUSIVE_KINDS.includes(spec.kind) ? [...this.active.values()].find((a) => a.id !== id && a.spec.kind === spec.kind) ?? null : null;
    if (!old && !rival && this.active.size >= MAX_VM_FAULTS) {
      throw new VmwpFailure('InvalidState', `VM "${h.vm}" has ${this.active.size} active faults, the most it takes; clear one first`);
    }
    // Everything is checked before anything changes.
    let vmbus: { injector: VmbusFaultInjector; names: string[] } | null = null;
    let vpMask = 0;
    let vps: number[] = [];
    if (spec.kind === 'vmbus') {
      vmbus = h.vmbus();
      if (!vmbus) throw new VmwpFailure('InvalidState', `VM "${h.vm}" has no VMBus yet`);
      if (spec.channel !== null && !vmbus.names.includes(spec.channel)) {
        throw new VmwpFailure('InvalidArgument', `VM "${h.vm}" has no VMBus channel "${spec.channel}" (its channels: ${vmbus.names.join(', ') || 'none'})`);
      }
    } else if (spec.kind === 'vp-stall') {
      vps = spec.vps ?? Array.from({ length: h.vps }, (_, i) => i);
      const bad = vps.find((v) => v >= h.vps);
      if (bad !== undefined) throw new VmwpFailure('InvalidArgument', `VM "${h.vm}" has ${h.vps} VP${h.vps === 1 ? '' : 's'} (${h.vps === 1 ? 'VP 0' : `0 to ${h.vps - 1}`}); there is no VP ${bad}`);
      const high = vps.find((v) => v > FAULT_STALL_MAX_VP);
      if (high !== undefined) throw new VmwpFailure('InvalidArgument', `the hypervisor stalls VPs 0 to ${FAULT_STALL_MAX_VP} only, not VP ${high}`);
      for (const v of vps) vpMask += 2 ** v;
    }
    // A fault with this id but of another kind is undone first (one of the same kind is overwritten).
    if (old && old.spec.kind !== spec.kind) {
      this.forget(old);
      await this.undo(old);
    }
    const now = Date.now();
    let applied: Record<string, unknown> = {};
    let channels: string[] = [];
    let fault: VmbusFault | null = null;
    try {
      switch (spec.kind) {
        case 'vmbus': {
          const { kind: _k, ...options } = spec;
          fault = new VmbusFault(options);
          vmbus!.injector.set(id, fault);
          channels = spec.channel === null ? [...vmbus!.names] : [spec.channel];
          break;
        }
        case 'interrupt-delay': {
          const delayUs = spec.delayMs * 1000;
          await this.setProperties([['FaultInterruptDelayUs', delayUs]], rival ?? old);
          applied = { delayUs };
          break;
        }
        case 'clock': {
          const offsetUs = spec.offsetMs * 1000;
          await this.setProperties([['FaultClockOffsetUs', offsetUs], ['FaultClockSkewPpm', spec.skewPpm]], rival ?? old);
          applied = { offsetUs, skewPpm: spec.skewPpm };
          break;
        }
        case 'vp-stall': {
          await this.setProperties([['FaultStalledVps', vpMask]], rival ?? old);
          applied = { vps, mask: vpMask };
          break;
        }
        case 'bitflip': {
          const r = await h.flipByte(spec.gpa, spec.mask).catch((e: unknown) => {
            throw failure(e, `flipping bits at GPA 0x${spec.gpa.toString(16)}`);
          });
          applied = { gpa: spec.gpa, mask: spec.mask, before: r.before, after: r.after };
          break;
        }
      }
    } catch (e) {
      // The fault this id named before was undone for this one, which failed: it is over too.
      if (old && old.spec.kind !== spec.kind) this.ended(old, 'cleared', `replaced by fault ${id}, which failed`);
      throw e;
    }
    // Applied: the fault it replaced is gone (its setting overwritten, or its VMBus fault swapped).
    if (old) this.forget(old);
    if (rival) {
      this.forget(rival);
      this.ended(rival, 'cleared', `replaced by fault ${id} of the same kind`);
    }
    const f: ActiveFault = { id, spec, startedAt: now, endsAt: now + forMs, channels, applied, vmbus: fault, timer: null };
    this.active.set(id, f);
    f.timer = setTimeout(() => void this.expire(f), forMs);
    f.timer.unref?.();
    h.log.info({ fault: id, kind: spec.kind, forMs, ...(channels.length ? { channels } : {}), ...applied }, 'fault set');
    return { id, kind: spec.kind, startedAt: f.startedAt, endsAt: f.endsAt, channels, applied, replaced: old ? old.id : rival ? rival.id : null };
  }

  /**
   * Sets fault properties; on a failure, puts back what was there (the values of `previous`,
   * the fault of this kind being replaced, or 0) and throws.
   */
  private async setProperties(values: Array<[FaultPropertyName, number]>, previous: ActiveFault | null): Promise<void> {
    const props = values.map(([n, v]) => [faultProperty(n), v, n] as const);
    const done: number[] = [];
    try {
      for (const [p, v] of props) {
        await this.host.setProperty(p, v);
        done.push(p);
      }
    } catch (e) {
      const back = previous && EXCLUSIVE_KINDS.includes(previous.spec.kind) ? this.settingOf(previous) : new Map<number, number>();
      for (const p of done) await this.host.setProperty(p, back.get(p) ?? 0).catch(() => undefined);
      // The one that failed, by name (both of a clock fault were named, the skew too when only
      // the offset failed). A value out of range is a refusal of the fault as asked, said so.
      const [, v, name] = props[done.length] ?? props[0]!;
      if (e instanceof HypercallError && e.status === HvStatus.PROPERTY_VALUE_OUT_OF_RANGE) {
        const why = name === 'FaultClockOffsetUs' && v < 0 ? ': a step back may not take the VM\'s reference time below 0, and it counts from the VM\'s start (a step back is at most as long as the VM has run)' : '';
        throw new VmwpFailure('InvalidArgument', `the hypervisor refused ${name} = ${v}: out of range${why}; nothing was set`);
      }
      throw failure(e, `the hypervisor refused ${name}`);
    }
  }

  /** The property values an active property fault holds. */
  private settingOf(f: ActiveFault): Map<number, number> {
    const s = f.spec;
    const m = new Map<number, number>();
    if (s.kind === 'interrupt-delay') m.set(faultProperty('FaultInterruptDelayUs'), s.delayMs * 1000);
    else if (s.kind === 'clock') {
      m.set(faultProperty('FaultClockOffsetUs'), s.offsetMs * 1000);
      m.set(faultProperty('FaultClockSkewPpm'), s.skewPpm);
    } else if (s.kind === 'vp-stall') m.set(faultProperty('FaultStalledVps'), Number(f.applied.mask));
    return m;
  }

  /** Ends fault `id` (null: every fault) now; answers the ids ended (an unknown id is no error). */
  clear(id: string | null, why = 'cleared by request'): Promise<{ cleared: string[] }> {
    return this.serialize(async () => {
      const which = id === null ? [...this.active.values()] : [this.active.get(id)].filter((f): f is ActiveFault => f !== undefined);
      for (const f of which) await this.end(f, 'cleared', why);
      return { cleared: which.map((f) => f.id) };
    });
  }

  /** Ends every fault (before a save or a migration). */
  endAll(why: string): Promise<{ cleared: string[] }> {
    return this.clear(null, why);
  }

  private expire(f: ActiveFault): Promise<void> {
    return this.serialize(async () => {
      if (this.active.get(f.id) === f) await this.end(f, 'expired', `its ${f.endsAt - f.startedAt} ms were up`);
    });
  }

  private async end(f: ActiveFault, reason: 'expired' | 'cleared', why: string): Promise<void> {
    this.forget(f);
    await this.undo(f);
    this.ended(f, reason, why);
  }

  /** Takes `f` out of the table and stops its timer (nothing is undone). */
  private forget(f: ActiveFault): void {
    if (f.timer) clearTimeout(f.timer);
    f.timer = null;
    if (this.active.get(f.id) === f) this.active.delete(f.id);
  }

  /** Undoes what `f` did; a failure is logged (the fault is over either way). */
  private async undo(f: ActiveFault): Promise<void> {
    const h = this.host;
    try {
      switch (f.spec.kind) {
        case 'vmbus': {
          const v = h.vmbus();
          if (v && v.injector.get(f.id) === f.vmbus) v.injector.remove(f.id);
          break;
        }
        case 'interrupt-delay':
          await h.setProperty(faultProperty('FaultInterruptDelayUs'), 0);
          break;
        case 'clock':
          await h.setProperty(faultProperty('FaultClockOffsetUs'), 0);
          await h.setProperty(faultProperty('FaultClockSkewPpm'), 0);
          await h.clockRestored?.();
          break;
        case 'vp-stall':
          await h.setProperty(faultProperty('FaultStalledVps'), 0);
          break;
        case 'bitflip':
          break; // instantaneous: nothing to undo
      }
    } catch (e) {
      h.log.warn({ fault: f.id, kind: f.spec.kind, err: (e as Error).message }, 'undoing a fault failed');
    }
  }

  private ended(f: ActiveFault, reason: 'expired' | 'cleared', why: string): void {
    const stats = this.statsOf(f);
    this.host.log.info({ fault: f.id, kind: f.spec.kind, reason, why, stats }, 'fault ended');
    this.host.note({ t: 'faultEnded', id: f.id, kind: f.spec.kind, reason, why, stats });
  }

  private statsOf(f: ActiveFault): VmwpFaultStats {
    if (!f.vmbus) return {};
    const s = f.vmbus.stats;
    return { packets: { ...s.packets }, signals: { ...s.signals } };
  }

  /** The active faults. */
  list(): VmwpFaultInfo[] {
    return [...this.active.values()].map((f) => ({
      id: f.id, kind: f.spec.kind, spec: f.spec, startedAt: f.startedAt, endsAt: f.endsAt, channels: f.channels, stats: this.statsOf(f),
    }));
  }

  /** The worker is exiting: timers stop, nothing is undone or reported (the VM goes with it). */
  dispose(): void {
    this.disposed = true;
    for (const f of this.active.values()) if (f.timer) clearTimeout(f.timer);
    this.active.clear();
  }
}
