/**
 * The hypervisor's scheduler thread: the logical processors' dispatcher. It owns the policy
 * (`SchedulerCore`), the synthetic timers and IPI delivery, and talks to the VP threads of every
 * partition only through their shared VP pages and shared futexes, so a dispatch or a preemption
 * costs a futex wake, not a message. It sleeps on the host's doorbell word until the next
 * deadline (quantum end, budget exhaustion, period end or timer expiry) or until someone rings.
 *
 * The main thread sends it configuration over a MessagePort (read synchronously with
 * receiveMessageOnPort, then the doorbell is rung); it sends back what needs the main thread:
 * message-mode timer expirations (they go through the SynIC) and intercepted port accesses.
 */
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import {
  Dispatch, VpPage, VpRunState, VirtualApicView, SchedRegion, VpRegionHeader, STIMER_COUNT, decodeStimerConfig, vpPageOffset, referenceTime,
} from '@hvlab/protocol';
import { futexWait, futexWake } from '@hvlab/shm';
import { SchedulerCore, type SchedVp, type VpSchedState } from './scheduler.js';

export type ToScheduler =
  | { t: 'addPartition'; id: number; region: SharedArrayBuffer; suspended: boolean; weight: number; reserve: number; cap: number }
  | { t: 'removePartition'; id: number }
  | { t: 'addVp'; id: number; index: number }
  | { t: 'removeVp'; id: number; index: number }
  | { t: 'props'; id: number; weight?: number; reserve?: number; cap?: number }
  | { t: 'suspend'; id: number; on: boolean }
  | { t: 'interceptDone'; id: number; index: number }
  | { t: 'timersRestored'; id: number; index: number }
  | { t: 'stop' };

export type FromScheduler =
  | { t: 'timer'; id: number; index: number; timer: number; sint: number; expiration: number; delivery: number }
  | { t: 'intercept'; id: number; index: number; port: number; access: number; size: number; value: number };

export interface SchedulerThreadData {
  lps: number;
  doorbell: SharedArrayBuffer;
  port: MessagePort;
  quantumNs?: number;
  periodNs?: number;
}

interface VpRec {
  sched: SchedVp;
  off: number; // byte offset of the VP page
  apic: VirtualApicView;
  timerGen: number;
  /** The timer MSR values the scheduler last acted on, per timer. */
  seen: Array<{ raw: number; count: number }>;
}

interface PartRec {
  id: number;
  region: SharedArrayBuffer;
  i32: Int32Array;
  f64: Float64Array;
  refBase: bigint;
  big: BigInt64Array;
  /** The whole region as i64 words (release stamps). */
  big2: BigInt64Array;
  props: { weight: number; reserve: number; cap: number; suspended: boolean };
  vps: Map<number, VpRec>;
}

const STATE_CODE: Record<VpSchedState, number> = {
  Absent: VpRunState.Absent, Ready: VpRunState.Ready, Running: VpRunState.Running, Waiting: VpRunState.Waiting, Suspended: VpRunState.Suspended,
};

/** How far before the scheduler noticed a release a VP's own release stamp may be believed. */
const RELEASE_SLACK_NS = 500_000;

function nowNs(): number {
  return Number(process.hrtime.bigint());
}

export function runScheduler(data: SchedulerThreadData): void {
  const core = new SchedulerCore({ lps: data.lps, quantumNs: data.quantumNs, periodNs: data.periodNs });
  const bell = new Int32Array(data.doorbell);
  const bellIdx = SchedRegion.doorbell >> 2;
  const parts = new Map<number, PartRec>();
  const port = data.port;
  let running = true;

  const w = (p: PartRec, off: number): number => (off >> 2);
  const dispatchIdx = (p: PartRec, v: VpRec): number => w(p, v.off + VpPage.dispatch);

  /**
   * When VP `v` left its LP: what it reported, but never before its grant and at most
   * RELEASE_SLACK_NS before the scheduler saw it, so a lying guest gains little.
   */
  function releaseTime(p: PartRec, v: VpRec, now: number): number {
    const reported = Number(p.big2[(v.off + VpPage.releasedNs) >> 3]);
    return Math.max(v.sched.grantedAt, now - RELEASE_SLACK_NS, Math.min(now, reported));
  }

  function refNow(p: PartRec): number {
    // Re-read the base each time: a restore moves it.
    p.refBase = p.big[VpRegionHeader.refBaseNs >> 3];
    return referenceTime(p.refBase);
  }

  function handle(m: ToScheduler, now: number): void {
    switch (m.t) {
      case 'addPartition': {
        const i32 = new Int32Array(m.region);
        const big = new BigInt64Array(m.region, 0, 2);
        parts.set(m.id, {
          id: m.id, region: m.region, i32, f64: new Float64Array(m.region), big, big2: new BigInt64Array(m.region),
          refBase: big[VpRegionHeader.refBaseNs >> 3], props: { weight: m.weight, reserve: m.reserve, cap: m.cap, suspended: m.suspended }, vps: new Map(),
        });
        break;
      }
      case 'removePartition': {
        const p = parts.get(m.id);
        if (!p) break;
        for (const v of p.vps.values()) {
          core.remove(v.sched);
          Atomics.store(p.i32, dispatchIdx(p, v), Dispatch.Off);
          futexWake(p.region, dispatchIdx(p, v));
        }
        parts.delete(m.id);
        break;
      }
      case 'addVp': {
        const p = parts.get(m.id);
        if (!p || p.vps.has(m.index)) break;
        const off = vpPageOffset(m.index);
        const sched = core.add(m.id, m.index, p.props, now);
        p.vps.set(m.index, { sched, off, apic: new VirtualApicView(p.i32, off), timerGen: Atomics.load(p.i32, w(p, off + VpPage.timerGen)), seen: Array.from({ length: STIMER_COUNT }, () => ({ raw: 0, count: 0 })) });
        break;
      }
      case 'removeVp': {
        const p = parts.get(m.id);
        const v = p?.vps.get(m.index);
        if (!p || !v) break;
        core.remove(v.sched);
        p.vps.delete(m.index);
        break;
      }
      case 'props': {
        const p = parts.get(m.id);
        if (!p) break;
        if (m.weight !== undefined) p.props.weight = m.weight;
        if (m.reserve !== undefined) p.props.reserve = m.reserve;
        if (m.cap !== undefined) p.props.cap = m.cap;
        for (const v of p.vps.values()) core.setProps(v.sched, m);
        break;
      }
      case 'suspend': {
        const p = parts.get(m.id);
        if (!p) break;
        p.props.suspended = m.on;
        for (const v of p.vps.values()) core.setSuspended(v.sched, m.on, now, 'partition');
        break;
      }
      case 'interceptDone': {
        const v = parts.get(m.id)?.vps.get(m.index);
        if (v) core.setSuspended(v.sched, false, now, 'intercept');
        break;
      }
      case 'timersRestored': {
        const p = parts.get(m.id);
        const v = p?.vps.get(m.index);
        if (p && v) {
          v.timerGen = Atomics.load(p.i32, w(p, v.off + VpPage.timerGen));
          for (let t = 0; t < STIMER_COUNT; t++) v.seen[t] = { raw: Atomics.load(p.i32, w(p, v.off + VpPage.stimerConfig) + t), count: p.f64[(v.off + VpPage.stimerCount >> 3) + t] };
        }
        break;
      }
      case 'stop':
        running = false;
        break;
    }
  }

  /**
   * Re-reads a VP's timer MSRs after the guest wrote some of them. Only a timer whose own MSRs
   * changed restarts: rewriting the slice timer must not push a periodic timer back.
   */
  function reloadTimers(p: PartRec, v: VpRec): void {
    const ref = refNow(p);
    for (let t = 0; t < STIMER_COUNT; t++) {
      const raw = Atomics.load(p.i32, w(p, v.off + VpPage.stimerConfig) + t);
      const cfg = decodeStimerConfig(raw);
      const count = p.f64[(v.off + VpPage.stimerCount >> 3) + t];
      if (v.seen[t].raw === raw && v.seen[t].count === count) continue;
      v.seen[t] = { raw, count };
      let next = 0;
      if (cfg.enable && Number.isFinite(count) && count > 0 && (cfg.direct ? cfg.vector >= 16 : true)) {
        next = cfg.periodic ? ref + count : count;
      }
      p.f64[(v.off + VpPage.stimerNext >> 3) + t] = next;
    }
  }

  /** Fires due timers; returns the earliest pending expiry in ns (host clock), or Infinity. */
  function runTimers(p: PartRec, v: VpRec, now: number): number {
    let earliest = Infinity;
    const ref = refNow(p);
    for (let t = 0; t < STIMER_COUNT; t++) {
      const ni = (v.off + VpPage.stimerNext >> 3) + t;
      let next = p.f64[ni];
      if (!(next > 0)) continue;
      const cfgIdx = w(p, v.off + VpPage.stimerConfig) + t;
      const cfg = decodeStimerConfig(Atomics.load(p.i32, cfgIdx));
      if (!cfg.enable) {
        p.f64[ni] = 0;
        continue;
      }
      if (next <= ref) {
        if (cfg.direct) {
          v.apic.assert(cfg.vector);
        } else {
          port.postMessage({ t: 'timer', id: p.id, index: v.sched.index, timer: t, sint: cfg.sint, expiration: next, delivery: ref } satisfies FromScheduler);
        }
        if (cfg.periodic) {
          const period = p.f64[(v.off + VpPage.stimerCount >> 3) + t];
          if (!(period > 0)) next = 0;
          else {
            next += period;
            if (next <= ref) next = ref + period - ((ref - next) % period); // skip missed periods
          }
        } else {
          next = 0;
          // A one-shot timer disables itself; re-arming it with the same count is then a change.
          v.seen[t].raw = Atomics.and(p.i32, cfgIdx, ~1) & ~1;
        }
        p.f64[ni] = next;
      }
      if (next > 0) earliest = Math.min(earliest, now + (next - ref) * 100);
    }
    return earliest;
  }

  function deliverIpi(p: PartRec, v: VpRec): void {
    const base = v.off;
    const vector = Atomics.load(p.i32, w(p, base + VpPage.icrVector)) & 0xff;
    const lo = Atomics.load(p.i32, w(p, base + VpPage.icrTargetsLo)) >>> 0;
    const hi = Atomics.load(p.i32, w(p, base + VpPage.icrTargetsHi)) >>> 0;
    if (vector >= 16) {
      for (const t of p.vps.values()) {
        const i = t.sched.index;
        const hit = i < 32 ? (lo >>> i) & 1 : (hi >>> (i - 32)) & 1;
        if (hit) t.apic.assert(vector);
      }
    }
    Atomics.store(p.i32, w(p, base + VpPage.icrBusy), 0);
    futexWake(p.region, w(p, base + VpPage.icrBusy));
  }

  while (running) {
    const seen = Atomics.load(bell, bellIdx);
    let now = nowNs();
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) handle(m.message as ToScheduler, now);
    if (!running) break;
    now = nowNs();
    let timerDeadline = Infinity;
    for (const p of parts.values()) {
      for (const v of p.vps.values()) {
        const s = v.sched;
        const di = dispatchIdx(p, v);
        const d = Atomics.load(p.i32, di);
        if (s.lp >= 0 && d === Dispatch.Off) {
          core.released(s, releaseTime(p, v, now), 'preempted');
        } else if (d === Dispatch.Halt) {
          if (s.lp >= 0 || !s.halted) core.released(s, s.lp >= 0 ? releaseTime(p, v, now) : now, 'halted');
          Atomics.compareExchange(p.i32, di, Dispatch.Halt, Dispatch.Off);
        } else if (d === Dispatch.Intercept) {
          core.released(s, s.lp >= 0 ? releaseTime(p, v, now) : now, 'intercept');
          Atomics.compareExchange(p.i32, di, Dispatch.Intercept, Dispatch.Off);
          const o = v.off;
          port.postMessage({
            t: 'intercept', id: p.id, index: s.index,
            port: Atomics.load(p.i32, w(p, o + VpPage.ioPort)) & 0xffff,
            access: Atomics.load(p.i32, w(p, o + VpPage.ioAccess)),
            size: Atomics.load(p.i32, w(p, o + VpPage.ioSize)),
            value: Atomics.load(p.i32, w(p, o + VpPage.ioValue)) >>> 0,
          } satisfies FromScheduler);
        } else if (d === Dispatch.Start) {
          Atomics.compareExchange(p.i32, di, Dispatch.Start, Dispatch.Off);
          if (s.lp >= 0) core.released(s, now, 'preempted');
          s.halted = true; // wake() below treats a started VP like a woken one
          s.absent = false;
          core.wake(s, now);
        }
        const gen = Atomics.load(p.i32, w(p, v.off + VpPage.timerGen));
        if (gen !== v.timerGen) {
          v.timerGen = gen;
          reloadTimers(p, v);
        }
        if (Atomics.load(p.i32, w(p, v.off + VpPage.icrBusy)) === 1) deliverIpi(p, v);
      }
      for (const v of p.vps.values()) timerDeadline = Math.min(timerDeadline, runTimers(p, v, now));
      // Halted VPs with something to take become Ready.
      for (const v of p.vps.values()) if (v.sched.halted && v.apic.deliverable() >= 0) core.wake(v.sched, now);
    }
    const dec = core.tick(now);
    for (const vp of dec.preempt) {
      const p = parts.get(vp.partitionId)!;
      const v = p.vps.get(vp.index)!;
      Atomics.compareExchange(p.i32, dispatchIdx(p, v), Dispatch.Granted, Dispatch.Preempt);
    }
    for (const g of dec.grant) {
      const p = parts.get(g.vp.partitionId)!;
      const v = p.vps.get(g.vp.index)!;
      Atomics.store(p.i32, dispatchIdx(p, v), Dispatch.Granted);
      futexWake(p.region, dispatchIdx(p, v));
    }
    // Publish states and accounting for observers (stats, `hvlab top`).
    for (const p of parts.values()) {
      for (const v of p.vps.values()) {
        const s = v.sched;
        Atomics.store(p.i32, w(p, v.off + VpPage.state), STATE_CODE[s.shownState]);
        const live = s.shownState === 'Running' ? now - s.stateSince : 0;
        const fo = v.off >> 3;
        p.f64[fo + (VpPage.runMs >> 3)] = (s.runNs + live) / 1e6;
        p.f64[fo + (VpPage.readyMs >> 3)] = (s.readyNs + (s.shownState === 'Ready' ? now - s.stateSince : 0)) / 1e6;
        p.f64[fo + (VpPage.waitMs >> 3)] = (s.waitNs + (s.shownState === 'Waiting' || s.shownState === 'Suspended' ? now - s.stateSince : 0)) / 1e6;
        p.f64[fo + (VpPage.dispatches >> 3)] = s.dispatches;
      }
    }
    const deadline = Math.min(dec.deadline, timerDeadline);
    // Wake at least every 50 ms so published accounting stays fresh.
    const waitMs = Math.max(0, Math.min(50, (deadline - nowNs()) / 1e6));
    if (waitMs > 0) futexWait(data.doorbell, bellIdx, seen, waitMs);
  }
}

if (workerData && (workerData as { scheduler?: SchedulerThreadData }).scheduler) runScheduler((workerData as { scheduler: SchedulerThreadData }).scheduler);
