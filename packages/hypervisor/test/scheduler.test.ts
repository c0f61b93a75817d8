/**
 * Unit tests of the VP scheduling policy (`SchedulerCore`), simulated with a fake clock in ns.
 *
 * The driver (`Sim`) plays the scheduler thread and the VP threads: it ticks the core at the
 * deadline it asks for (or at least every `stepNs`), and right after every event it injects; each
 * VP told to give its LP back acknowledges `ackDelayNs` later (it keeps the LP meanwhile, as a real
 * VP thread does until it sees the Preempt word). Run time is read from the core's own `runNs`
 * accounting. After every tick the driver checks the LP-ownership invariants (see `check`), so
 * every test below also checks them.
 */
import { expect } from 'chai';
import { SchedulerCore, type SchedDecisions, type SchedVp } from '../src/scheduler.js';

const US = 1_000;
const MS = 1_000_000;
const S = 1_000_000_000;
/** Any non-zero start, like a monotonic clock. */
const T0 = 7 * S;
const QUANTUM = 10 * MS;
const PERIOD = 100 * MS;

interface SimOptions {
  lps: number;
  quantumNs?: number;
  periodNs?: number;
  ackDelayNs?: number;
  stepNs?: number;
}

interface VpProps {
  weight: number;
  reserve: number;
  cap: number;
}

const name = (vp: SchedVp): string => `${vp.partitionId}/${vp.index}`;

class Sim {
  readonly core: SchedulerCore;
  readonly ackDelayNs: number;
  readonly stepNs: number;
  now = T0;
  /** Ticks run so far. */
  ticks = 0;
  /** Time integral of the number of owned LPs (ns). */
  lpBusyNs = 0;
  /** Every grant, in order. */
  readonly grants: Array<{ at: number; vp: SchedVp; lp: number }> = [];
  /** Pending preemption acknowledgements. */
  private acks: Array<{ vp: SchedVp; at: number }> = [];
  /** The deadline of the last tick (-Infinity: tick at once). */
  private deadline = -Infinity;
  private readonly hooks: Array<(d: SchedDecisions) => void> = [];

  constructor(o: SimOptions) {
    this.core = new SchedulerCore({ lps: o.lps, quantumNs: o.quantumNs ?? QUANTUM, periodNs: o.periodNs ?? PERIOD });
    this.ackDelayNs = o.ackDelayNs ?? 50 * US;
    this.stepNs = o.stepNs ?? 1 * MS;
  }

  /** Adds a VP and starts its thread (wake: a new VP is Absent until then). */
  add(partitionId: number, index: number, props: Partial<VpProps> = {}): SchedVp {
    const vp = this.core.add(partitionId, index, { weight: 100, reserve: 0, cap: 1, ...props, suspended: false }, this.now);
    expect(vp.shownState).to.equal('Absent');
    this.core.wake(vp, this.now);
    return vp;
  }

  /** Calls `f` with the decisions of every tick, after the built-in checks. */
  onTick(f: (d: SchedDecisions) => void): void {
    this.hooks.push(f);
  }

  /** Runs the core once at the current time and carries out its decisions. */
  tick(): SchedDecisions {
    const before = [...this.core.lpOwners()];
    const d = this.core.tick(this.now);
    this.ticks++;
    const granted = new Set<number>();
    for (const g of d.grant) {
      const what = `t=${this.now - T0}: grant of LP ${g.lp} to ${name(g.vp)}`;
      expect(g.lp, what).to.be.within(0, this.core.lps - 1);
      expect(before[g.lp], `${what}: the LP was already owned by ${before[g.lp] ? name(before[g.lp]!) : ''}`).to.equal(null);
      expect(granted.has(g.lp), `${what}: the LP was granted twice in one tick`).to.equal(false);
      granted.add(g.lp);
      expect(g.vp.lp, what).to.equal(g.lp);
      expect(before.includes(g.vp), `${what}: the VP already held an LP`).to.equal(false);
      const v = g.vp;
      expect({ absent: v.absent, halted: v.halted, capped: v.capped, suspended: v.partitionSuspended || v.interceptSuspended }, `${what}: not runnable`)
        .to.deep.equal({ absent: false, halted: false, capped: false, suspended: false });
      this.grants.push({ at: this.now, vp: g.vp, lp: g.lp });
    }
    for (const vp of d.preempt) {
      expect(vp.lp, `t=${this.now - T0}: preemption of ${name(vp)}, which holds no LP`).to.be.at.least(0);
      this.acks.push({ vp, at: this.now + this.ackDelayNs });
    }
    this.deadline = d.deadline;
    this.check();
    for (const h of this.hooks) h(d);
    return d;
  }

  /** LP ownership invariants: an LP has at most one owner, which knows it, and no VP holds an LP unknown to the table. */
  check(): void {
    const owners = this.core.lpOwners();
    expect(owners.length).to.equal(this.core.lps);
    owners.forEach((o, lp) => {
      if (o) expect(o.lp, `t=${this.now - T0}: LP ${lp} owner ${name(o)} thinks it holds LP ${o.lp}`).to.equal(lp);
    });
    let holding = 0;
    for (const vp of this.core.all()) {
      if (vp.lp < 0) continue;
      holding++;
      expect(owners[vp.lp], `t=${this.now - T0}: ${name(vp)} holds LP ${vp.lp}, which the table gives to someone else`).to.equal(vp);
    }
    expect(holding, `t=${this.now - T0}: VPs holding an LP`).to.be.at.most(this.core.lps);
  }

  /** Simulates until `end`, ticking at every deadline, ack and step. */
  runUntil(end: number): void {
    let sameTime = 0;
    while (this.now < end) {
      const nextAck = this.acks.reduce((m, a) => Math.min(m, a.at), Infinity);
      const next = Math.max(this.now, Math.min(end, this.now + this.stepNs, nextAck, this.deadline));
      if (next === this.now) {
        // A deadline at or before now: run again at once, but a policy that never lets time move is a livelock.
        if (++sameTime > 4) throw new Error(`t=${this.now - T0}: the scheduler keeps asking to run again without time passing`);
      } else sameTime = 0;
      this.advanceTo(next);
      this.tick();
    }
  }

  runFor(ns: number): void {
    this.runUntil(this.now + ns);
  }

  /** Runs until `cond()` holds after a tick (at most `limitNs` of simulated time). */
  runUntilCond(cond: () => boolean, limitNs: number, what: string): void {
    const end = this.now + limitNs;
    while (!cond()) {
      if (this.now >= end) throw new Error(`${what} did not happen within ${limitNs / MS} simulated ms`);
      this.runUntil(Math.min(end, this.now + 100 * US));
    }
  }

  /** The VP halts (it must hold an LP): it leaves its LP at once. */
  halt(vp: SchedVp): void {
    this.acks = this.acks.filter((a) => a.vp !== vp);
    this.core.released(vp, this.now, 'halted');
    this.tick();
  }

  /** A halted VP has an interrupt to take. */
  wake(vp: SchedVp): void {
    this.core.wake(vp, this.now);
    this.tick();
  }

  suspend(vp: SchedVp, on: boolean): void {
    this.core.setSuspended(vp, on, this.now);
    this.tick();
  }

  private advanceTo(t: number): void {
    const owned = this.core.lpOwners().filter((o) => o !== null).length;
    this.lpBusyNs += owned * (t - this.now);
    this.now = t;
    const due = this.acks.filter((a) => a.at <= t);
    this.acks = this.acks.filter((a) => a.at > t);
    for (const a of due) if (a.vp.preempting) this.core.released(a.vp, a.at, 'preempted');
  }
}

/** Run time of each VP over the next `ns` of simulated time. */
function measure(sim: Sim, vps: SchedVp[], ns: number): number[] {
  const start = vps.map((v) => v.runNs);
  sim.runFor(ns);
  return vps.map((v, i) => v.runNs - start[i]);
}

/** A small deterministic PRNG (xorshift32), so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe('SchedulerCore (simulated clock)', () => {
  it('rejects a logical-processor count that is not a positive integer', () => {
    for (const lps of [0, -1, 1.5, NaN]) expect(() => new SchedulerCore({ lps }), String(lps)).to.throw(/logical processor count/);
  });

  it('a newly added VP is Absent and is not dispatched until its thread starts (wake)', () => {
    const sim = new Sim({ lps: 1 });
    const vp = sim.core.add(1, 0, { weight: 100, reserve: 0, cap: 1, suspended: false }, sim.now);
    sim.runFor(50 * MS);
    expect(vp.shownState).to.equal('Absent');
    expect(vp.lp).to.equal(-1);
    expect(vp.runNs).to.equal(0);
    expect(sim.grants).to.have.length(0);
    sim.core.wake(vp, sim.now);
    sim.tick();
    expect(vp.lp).to.equal(0);
    expect(vp.shownState).to.equal('Running');
  });

  it('on one LP, always-runnable VPs of weights 100/200/700 get run time in proportion 10/20/70', () => {
    const sim = new Sim({ lps: 1 });
    const vps = [100, 200, 700].map((weight, i) => sim.add(1, i, { weight }));
    const run = measure(sim, vps, 10 * S);
    const total = run.reduce((a, b) => a + b, 0);
    // One LP, always busy: the shares split the whole wall time.
    expect(total).to.be.closeTo(10 * S, 1 * MS);
    const shares = run.map((r) => (100 * r) / total);
    expect(shares[0], `shares ${shares.map((s) => s.toFixed(2)).join('/')}`).to.be.closeTo(10, 2);
    expect(shares[1], `shares ${shares.map((s) => s.toFixed(2)).join('/')}`).to.be.closeTo(20, 2);
    expect(shares[2], `shares ${shares.map((s) => s.toFixed(2)).join('/')}`).to.be.closeTo(70, 2);
  });

  it('equal weights on one LP share it equally and take turns a quantum at a time', () => {
    const sim = new Sim({ lps: 1 });
    const vps = [0, 1, 2].map((i) => sim.add(1, i));
    const run = measure(sim, vps, 3 * S);
    for (const r of run) expect(r / S).to.be.closeTo(1, 0.02);
    // Each dispatch lasts about a quantum (plus the acknowledgement), so there are about 300 of them.
    expect(sim.grants.length).to.be.within(280, 310);
  });

  it('a VP capped at 25% runs at most 25% of wall time while its uncapped twin runs ~100%, and its LP idles meanwhile', () => {
    const sim = new Sim({ lps: 2 });
    const capped = sim.add(1, 0, { cap: 0.25 });
    const twin = sim.add(1, 1);
    const wasCapped: boolean[] = [];
    sim.onTick(() => {
      wasCapped.push(capped.capped);
      if (capped.capped) {
        // While capped it holds no LP once its acknowledgement is in, and nobody takes its place: one LP is free.
        if (!capped.preempting) expect(capped.lp).to.equal(-1);
        expect(capped.shownState).to.be.oneOf(['Waiting', 'Running']);
      }
    });
    const start = sim.now;
    const busy0 = sim.lpBusyNs;
    const [c, t] = measure(sim, [capped, twin], 10 * S);
    const wall = sim.now - start;
    expect(c / wall, 'capped share').to.be.at.most(0.26).and.at.least(0.24);
    expect(t / wall, 'twin share').to.be.at.least(0.99);
    expect(wasCapped.filter(Boolean).length, 'ticks during which the VP was capped').to.be.greaterThan(0);
    // The two LPs were busy for about 1.25 LPs' worth: the capped VP's LP really idled 75% of the time.
    expect((sim.lpBusyNs - busy0) / wall).to.be.closeTo(1.25, 0.01);
    // The capped VP was dispatched about once per period.
    expect(sim.grants.filter((g) => g.vp === capped).length).to.be.within(99, 102);
    expect(capped.waitNs / wall, 'capped VP Waiting time').to.be.closeTo(0.75, 0.01);
  });

  it('a capped VP is taken off its LP the moment its budget is spent, not at the next quantum', () => {
    const sim = new Sim({ lps: 1, ackDelayNs: 0 });
    const vp = sim.add(1, 0, { cap: 0.05 }); // 5 ms of a 100 ms period, half a quantum
    const perPeriod: number[] = [];
    for (let p = 0; p < 20; p++) perPeriod.push(measure(sim, [vp], PERIOD)[0]);
    // The clock starts at the first tick, so every window is exactly one accounting period.
    for (const r of perPeriod) expect(r).to.equal(5 * MS);
  });

  // SRC BUG (see the report): a preemption for the end of a quantum that is acknowledged after the
  // cap budget ran out leaves `usedInPeriod` over the budget without setting `capped`; the VP is
  // then dispatched again in the same period (with a deadline in the past) and runs once more for
  // the acknowledgement delay before the next tick caps it. Expected to fail until that is fixed.
  it('a VP whose cap budget ran out during a pending preemption is not dispatched again in that period', () => {
    // Budget 10.02 ms, quantum 10 ms, acknowledgements 0.5 ms: the first dispatch ends at the
    // quantum (budget left), and the acknowledgement overruns the budget.
    const sim = new Sim({ lps: 1, ackDelayNs: 500 * US });
    const capped = sim.add(1, 0, { cap: 0.1002 });
    const other = sim.add(1, 1);
    const deadlinesInPast: number[] = [];
    sim.onTick((d) => {
      if (d.deadline < sim.now) deadlinesInPast.push(sim.now - T0);
    });
    const overBudgetGrants: number[] = [];
    sim.onTick((d) => {
      for (const g of d.grant) if (g.vp === capped && capped.usedInPeriod >= capped.cap * PERIOD) overBudgetGrants.push(sim.now - T0);
    });
    const [c] = measure(sim, [capped, other], 2 * S);
    expect(overBudgetGrants, 'times (ns) the VP was dispatched with its budget already spent').to.deep.equal([]);
    expect(deadlinesInPast, 'times (ns) at which the scheduler asked to run again in the past').to.deep.equal([]);
    // At most the budget plus one acknowledgement per period.
    expect(c).to.be.at.most(20 * (0.1002 * PERIOD + 500 * US));
  });

  it('a VP with a 50% reserve gets at least half of one LP against three weight-100 competitors', () => {
    const sim = new Sim({ lps: 1 });
    const reserved = sim.add(1, 0, { reserve: 0.5 });
    const others = [1, 2, 3].map((i) => sim.add(1, i));
    sim.runFor(PERIOD / 2); // start measuring in mid-period, away from the first tick
    const perPeriod: number[][] = [];
    for (let p = 0; p < 30; p++) perPeriod.push(measure(sim, [reserved, ...others], PERIOD));
    const total = perPeriod.reduce((a, r) => a + r[0], 0);
    expect(total / (30 * PERIOD), 'reserved share').to.be.at.least(0.5);
    // Every period (window of one period length, straddling two accounting periods) holds its reserve.
    for (const r of perPeriod) expect(r[0] / PERIOD).to.be.at.least(0.5);
    // The unreserved rest is shared by weight among all four: the competitors get equal shares.
    const o = others.map((_, i) => perPeriod.reduce((a, r) => a + r[i + 1], 0));
    for (const x of o) expect(x / o[0]).to.be.closeTo(1, 0.05);
  });

  it('a VP within its reserve takes an LP from an unreserved VP at once, not after its quantum', () => {
    const sim = new Sim({ lps: 1 });
    const plain = sim.add(1, 0);
    sim.runFor(3 * MS);
    expect(plain.lp).to.equal(0);
    const reserved = sim.add(1, 1, { reserve: 0.3 });
    const d = sim.tick();
    expect(d.preempt).to.deep.equal([plain]);
    sim.runFor(100 * US); // the acknowledgement, 7 ms before the quantum would end
    expect(sim.core.lpOwners()[0]).to.equal(reserved);
    expect(plain.lp).to.equal(-1);
    expect(plain.shownState).to.equal('Ready');
  });

  // SRC BUG (see the report): the end-of-quantum check preempts a running VP whenever some VP is
  // waiting, without counting the free LPs that waiting VP is about to get in the same tick. The
  // running VP loses its LP for an acknowledgement round trip although nobody needed it. Expected
  // to fail until that is fixed.
  it('a VP at the end of its quantum keeps its LP when the waiting VP gets a free LP', () => {
    const core = new SchedulerCore({ lps: 2, quantumNs: QUANTUM, periodNs: PERIOD });
    const props = { weight: 100, reserve: 0, cap: 1, suspended: false };
    const a = core.add(1, 0, props, T0);
    core.wake(a, T0);
    expect(core.tick(T0).grant.map((g) => g.vp)).to.deep.equal([a]);
    // The scheduler thread runs again only after A's quantum ended (it ran late, or this is the
    // tick at the quantum deadline), and B started meanwhile. LP 1 is free for B.
    const t = T0 + QUANTUM + 2 * MS;
    const b = core.add(1, 1, props, t);
    core.wake(b, t);
    const d = core.tick(t);
    expect(d.grant.map((g) => ({ vp: g.vp.index, lp: g.lp }))).to.deep.equal([{ vp: 1, lp: 1 }]);
    expect(d.preempt.map((v) => v.index), 'VPs preempted although an LP was free').to.deep.equal([]);
  });

  it('a 4-VP partition on 2 LPs never has more than 2 VPs on an LP, and its run time is at most 2 x wall time', () => {
    const sim = new Sim({ lps: 2 });
    const vps = [0, 1, 2, 3].map((i) => sim.add(1, i, { weight: 100 * (i + 1) }));
    let maxHolding = 0;
    sim.onTick(() => {
      const owned = sim.core.lpOwners().filter((o) => o !== null);
      const holding = vps.filter((v) => v.lp >= 0);
      expect(owned.length).to.be.at.most(2);
      expect(holding.length).to.be.at.most(2);
      const key = (v: SchedVp): number => v.index;
      expect(holding.map(key).sort()).to.deep.equal(owned.map((o) => key(o!)).sort());
      maxHolding = Math.max(maxHolding, holding.length);
    });
    const start = sim.now;
    const run = measure(sim, vps, 5 * S);
    const wall = sim.now - start;
    const total = run.reduce((a, b) => a + b, 0);
    expect(maxHolding).to.equal(2);
    expect(total).to.be.at.most(2 * wall);
    expect(total / (2 * wall), 'both LPs kept busy').to.be.at.least(0.99);
    for (const r of run) expect(r).to.be.greaterThan(0);
  });

  it('a halted VP gets no run time until woken, and on waking gets no more than about one quantum of catch-up', () => {
    const sim = new Sim({ lps: 1 });
    const [a, b, c] = [0, 1, 2].map((i) => sim.add(1, i));
    sim.runFor(1 * S);
    sim.runUntilCond(() => a.lp >= 0 && !a.preempting, 100 * MS, 'VP 0 running');
    sim.halt(a);
    expect(a.lp).to.equal(-1);
    expect(a.shownState).to.equal('Waiting');
    const aRun = a.runNs;
    const grantsBefore = sim.grants.length;
    const [ra, rb, rc] = measure(sim, [a, b, c], 3 * S);
    expect(ra).to.equal(0);
    expect(a.runNs).to.equal(aRun);
    expect(sim.grants.slice(grantsBefore).some((g) => g.vp === a), 'a grant to the halted VP').to.equal(false);
    expect((rb + rc) / S).to.be.closeTo(3, 0.001);
    // It slept 3 s while the others ran 1.5 s each; with banked credit it would now run ~1.5 s alone.
    sim.wake(a);
    expect(a.halted).to.equal(false);
    const baseline = [a, b, c].map((v) => v.runNs);
    let maxLead = -Infinity;
    sim.onTick(() => {
      const [da, db, dc] = [a, b, c].map((v, i) => v.runNs - baseline[i]);
      maxLead = Math.max(maxLead, da - Math.max(db, dc));
    });
    // The documented rule: it starts at most one quantum (in virtual time) behind the least-served.
    expect(a.vruntime).to.be.at.least(Math.min(b.vruntime, c.vruntime) - QUANTUM);
    let longest = 0;
    sim.onTick(() => {
      if (a.lp >= 0) longest = Math.max(longest, sim.now - a.grantedAt);
    });
    sim.runFor(1 * S);
    // It does not keep the LP for long: at most its catch-up quantum and one fair quantum in a row.
    expect(longest / QUANTUM, 'longest stretch on the LP after waking (quanta)').to.be.at.most(2.01);
    // Round robin by itself lets one VP be up to a quantum ahead at a given moment; the wake adds at most one more.
    expect(maxLead / QUANTUM, 'largest lead of the woken VP over the best-served other (quanta)').to.be.at.most(2.1);
    // After 1 s the woken VP is ahead of the others' average by about one quantum, not by the ~1.5 s it slept.
    const [da, db, dc] = [a, b, c].map((v, i) => v.runNs - baseline[i]);
    expect(da - (db + dc) / 2, 'catch-up of the woken VP after 1 s').to.be.at.most(2 * QUANTUM);
    expect(da / S).to.be.closeTo(1 / 3, 0.03);
  });

  it('asks for no deadline while every VP is halted, suspended, absent or running uncapped with none waiting, for the quantum while one waits, and for the period end while one waits out its cap', () => {
    const sim = new Sim({ lps: 1 });
    sim.core.add(2, 0, { weight: 100, reserve: 0, cap: 1, suspended: false }, sim.now);
    expect(sim.tick().deadline, 'only an absent VP').to.equal(Infinity);
    const a = sim.add(1, 0);
    const first = sim.tick();
    expect(first.grant.map((g) => g.vp), 'the runnable VP got the LP').to.deep.equal([a]);
    // Alone and uncapped, a running VP needs no look from the scheduler until something rings.
    expect(first.deadline, 'a VP running alone, uncapped').to.equal(Infinity);
    expect(first.waiting, 'VPs still waiting for an LP').to.equal(0);
    // A second VP waiting for the one LP: the quantum's end matters, and waiting says so.
    const b = sim.add(4, 0);
    const both = sim.tick();
    expect(both.waiting, 'VPs still waiting for an LP').to.equal(1);
    expect(both.deadline, 'a VP waits for the LP').to.be.above(sim.now).and.at.most(a.grantedAt + QUANTUM);
    sim.runUntilCond(() => b.lp >= 0 && !b.preempting, 100 * MS, 'VP 4/0 running after a quantum of VP 1/0');
    sim.halt(b);
    sim.runUntilCond(() => a.lp >= 0 && !a.preempting, 100 * MS, 'VP 1/0 running again');
    expect(sim.tick().deadline, 'the other VP halted').to.equal(Infinity);
    sim.halt(a);
    expect(sim.tick().deadline, 'the VP halted').to.equal(Infinity);
    sim.wake(a);
    sim.runUntilCond(() => a.lp >= 0 && !a.preempting, 100 * MS, 'VP 1/0 running again');
    sim.suspend(a, true);
    sim.runUntilCond(() => a.lp < 0, 100 * MS, 'the suspended VP leaving its LP');
    expect(sim.tick().deadline, 'the VP suspended').to.equal(Infinity);
    // A capped VP must be let go at the next period: that deadline stays.
    const c = sim.add(3, 0, { cap: 0.1 });
    sim.runUntilCond(() => c.lp >= 0 && !c.preempting, 100 * MS, 'VP 3/0 running');
    expect(sim.tick().deadline, 'a capped VP running: its budget ends').to.be.above(sim.now).and.at.most(sim.now + 0.1 * PERIOD);
    sim.runUntilCond(() => c.capped && c.lp < 0, 200 * MS, 'VP 3/0 spending its budget');
    const d = sim.tick().deadline;
    expect(d, 'a capped VP').to.be.above(sim.now).and.below(sim.now + PERIOD + 1);
    // In the next period it runs again; once it halts, nothing is due.
    sim.runUntilCond(() => c.lp >= 0 && !c.preempting, 2 * PERIOD, 'VP 3/0 running in the next period');
    sim.halt(c);
    expect(sim.tick().deadline, 'every VP halted or suspended').to.equal(Infinity);
  });

  it('a VP that halts while another VP waits lets that VP run at once', () => {
    const sim = new Sim({ lps: 1 });
    const [a, b] = [0, 1].map((i) => sim.add(1, i));
    sim.tick();
    const running = a.lp >= 0 ? a : b;
    const other = running === a ? b : a;
    sim.runFor(2 * MS);
    sim.halt(running);
    expect(other.lp).to.equal(0);
  });

  it('suspended VPs are preempted, never granted while suspended, and run again when resumed', () => {
    const sim = new Sim({ lps: 2 });
    const vps = [0, 1, 2].map((i) => sim.add(1, i));
    sim.runFor(200 * MS);
    const onLp = vps.find((v) => v.lp >= 0 && !v.preempting)!;
    const rest = vps.filter((v) => v !== onLp);
    const d = (() => {
      sim.core.setSuspended(onLp, true, sim.now);
      return sim.tick();
    })();
    expect(d.preempt).to.include(onLp);
    const grantsBefore = sim.grants.length;
    sim.runFor(1 * MS); // the acknowledgement
    expect(onLp.lp).to.equal(-1);
    expect(onLp.shownState).to.equal('Suspended');
    const [s, r1, r2] = measure(sim, [onLp, ...rest], 1 * S);
    expect(s).to.equal(0);
    expect(sim.grants.slice(grantsBefore).some((g) => g.vp === onLp), 'a grant to the suspended VP').to.equal(false);
    expect((r1 + r2) / S, 'the two others keep both LPs').to.be.closeTo(2, 0.001);
    // Resumed: it takes part again.
    sim.suspend(onLp, false);
    const [s2] = measure(sim, [onLp], 1 * S);
    expect(s2).to.be.greaterThan(0);
  });

  it('suspending every VP of a partition frees every LP and leaves the other partition alone', () => {
    const sim = new Sim({ lps: 2 });
    const p1 = [0, 1].map((i) => sim.add(1, i));
    const p2 = [0, 1].map((i) => sim.add(2, i));
    sim.runFor(100 * MS);
    for (const v of p1) sim.core.setSuspended(v, true, sim.now);
    sim.tick();
    sim.runFor(1 * MS);
    expect(p1.map((v) => v.lp)).to.deep.equal([-1, -1]);
    const [a, b, c, d] = measure(sim, [...p1, ...p2], 1 * S);
    expect([a, b]).to.deep.equal([0, 0]);
    expect(c / S).to.be.closeTo(1, 0.001);
    expect(d / S).to.be.closeTo(1, 0.001);
  });

  it('grant never gives an LP that is already owned, through random halts, wakes, suspensions and removals', () => {
    const rand = rng(0x5eed);
    const sim = new Sim({ lps: 3, ackDelayNs: 200 * US });
    const vps: SchedVp[] = [];
    for (let p = 1; p <= 3; p++) {
      for (let i = 0; i < 3; i++) {
        vps.push(sim.add(p, i, { weight: 1 + Math.floor(rand() * 1000), reserve: rand() < 0.3 ? rand() * 0.4 : 0, cap: rand() < 0.3 ? 0.1 + rand() * 0.8 : 1 }));
      }
    }
    let grants = 0;
    sim.onTick((d) => (grants += d.grant.length));
    for (let round = 0; round < 2000; round++) {
      sim.runFor(Math.floor(rand() * 5 * MS));
      const vp = vps[Math.floor(rand() * vps.length)];
      const r = rand();
      if (!sim.core.get(vp.partitionId, vp.index)) continue;
      if (r < 0.3 && vp.lp >= 0 && !vp.preempting) sim.halt(vp);
      else if (r < 0.55 && vp.halted) sim.wake(vp);
      else if (r < 0.7) sim.suspend(vp, !vp.partitionSuspended);
      else if (r < 0.75 && vp.lp >= 0 && !vp.preempting) {
        // Stopped on an intercept, then resumed.
        sim.core.released(vp, sim.now, 'intercept');
        sim.tick();
        sim.runFor(MS);
        sim.core.setSuspended(vp, false, sim.now, 'intercept');
        sim.tick();
      } else if (r < 0.77 && vp.lp < 0) {
        sim.core.remove(vp);
        vps.splice(vps.indexOf(vp), 1);
        const again = sim.add(vp.partitionId, vp.index, { weight: vp.weight });
        vps.push(again);
        sim.tick();
      }
    }
    expect(grants).to.be.greaterThan(500);
  });

  it('keeps run, ready and wait accounting that adds up to the time since the VP started', () => {
    const sim = new Sim({ lps: 1 });
    const start = sim.now;
    const vps = [0, 1, 2].map((i) => sim.add(1, i, { cap: i === 2 ? 0.2 : 1 }));
    sim.runFor(500 * MS);
    sim.runUntilCond(() => vps[0].lp >= 0 && !vps[0].preempting, 100 * MS, 'VP 0 running');
    sim.halt(vps[0]);
    sim.runFor(500 * MS);
    for (const v of vps) expect(v.runNs + v.readyNs + v.waitNs, `VP ${v.index}`).to.equal(sim.now - start);
  });

  describe('dispatchNow (the signalling path\'s shortcut to a halted VP)', () => {
    /** Two identical simulations: VP 0 holds LP 0, VP 1 halted; then `setup` on both. */
    function twins(lps: number, setup: (sim: Sim, vps: SchedVp[]) => void, props: Partial<VpProps>[] = []): Array<{ sim: Sim; vps: SchedVp[] }> {
      return [0, 1].map(() => {
        const sim = new Sim({ lps });
        const vps = [0, 1].map((i) => sim.add(1, i, props[i] ?? {}));
        sim.runFor(3 * MS);
        const halted = vps.find((v) => v.lp >= 0 && v.index === 1) ?? vps[1];
        if (halted.lp >= 0) sim.halt(halted);
        else {
          sim.runUntilCond(() => halted.lp >= 0 && !halted.preempting, 100 * MS, 'VP 1 running');
          sim.halt(halted);
        }
        sim.runFor(2 * MS);
        setup(sim, vps);
        return { sim, vps };
      });
    }

    it('gives a woken VP the free LP that the next tick would give it, and the tick after agrees', () => {
      const [a, b] = twins(2, () => {});
      expect(a.vps[1].halted).to.equal(true);
      // a: the shortcut; b: wake then tick, as the pass does.
      a.sim.core.wake(a.vps[1], a.sim.now);
      const lp = a.sim.core.dispatchNow(a.vps[1], a.sim.now);
      b.sim.wake(b.vps[1]);
      expect(lp).to.equal(b.vps[1].lp).and.to.be.at.least(0);
      expect(a.vps[1].shownState).to.equal('Running');
      expect(a.vps[1].dispatches).to.equal(b.vps[1].dispatches);
      a.sim.check();
      const d = a.sim.tick();
      expect(d.grant, 'the tick after grants nothing more').to.deep.equal([]);
      expect(d.preempt, 'nor takes anything back').to.deep.equal([]);
      // And both go on alike.
      a.sim.runFor(50 * MS);
      b.sim.runFor(50 * MS);
      expect(a.vps.map((v) => v.lp)).to.deep.equal(b.vps.map((v) => v.lp));
    });

    it('declines (-1) when no active LP is free, when another VP waits, over its cap, and past the period end, and then takes nothing', () => {
      const cases: Array<[string, number, (sim: Sim, vps: SchedVp[]) => void, Partial<VpProps>[]]> = [
        ['no free LP', 1, () => {}, []],
        ['LP 1 is not active', 2, (sim) => sim.core.setActiveLps(1), []],
        ['another VP waits for an LP', 2, (sim, vps) => {
          const third = sim.core.add(1, 2, { weight: 100, reserve: 0, cap: 1, suspended: false }, sim.now);
          sim.core.wake(third, sim.now); // runnable, and no tick has given it the free LP yet
          expect(vps[0].lp).to.be.at.least(0);
        }, []],
        ['its cap is spent', 2, (sim, vps) => void (vps[1].usedInPeriod = 0.3 * PERIOD), [{}, { cap: 0.25 }]],
        ['the period ended (a roll-over is the tick\'s)', 2, (sim) => {
          sim.now += PERIOD;
        }, []],
      ];
      for (const [what, lps, setup, props] of cases) {
        const [{ sim, vps }] = twins(lps, setup, props);
        const owners = [...sim.core.lpOwners()];
        sim.core.wake(vps[1], sim.now);
        expect(sim.core.dispatchNow(vps[1], sim.now), what).to.equal(-1);
        expect([...sim.core.lpOwners()], `${what}: no LP changed hands`).to.deep.equal(owners);
        expect(vps[1].lp, what).to.equal(-1);
      }
    });

    it('lpForNow names the LP without taking it; with `releasing`, a VP still on the LP it halted on counts as off it', () => {
      const [{ sim, vps }] = twins(2, () => {});
      expect(vps[1].halted).to.equal(true);
      const owners = [...sim.core.lpOwners()];
      const fields = { ...vps[1] };
      const lp = sim.core.lpForNow(vps[1], sim.now, false);
      expect(lp, 'a free LP').to.be.at.least(0);
      expect([...sim.core.lpOwners()], 'no LP changed hands').to.deep.equal(owners);
      expect({ ...vps[1] }, 'the VP is as it was').to.deep.equal(fields);
      sim.core.wake(vps[1], sim.now);
      expect(sim.core.grantNow(vps[1], lp, sim.now)).to.equal(true);
      expect(vps[1].lp).to.equal(lp);
      expect(vps[1].shownState).to.equal('Running');
      sim.check();
      const held = [...sim.core.lpOwners()];
      expect(sim.core.grantNow(vps[0], lp, sim.now), 'an LP that is taken').to.equal(false);
      expect([...sim.core.lpOwners()], 'and nothing changed').to.deep.equal(held);

      // One LP, held by VP 0, which halted without the scheduler taking it yet (a quiet halt).
      const one = new Sim({ lps: 1 });
      const a = one.add(1, 0, {});
      one.runFor(3 * MS);
      expect(a.lp).to.equal(0);
      expect(one.core.lpForNow(a, one.now, false), 'it holds its LP').to.equal(-1);
      expect(one.core.lpForNow(a, one.now, true), 'its own LP, once released').to.equal(0);
      expect(a.lp, 'still held: lpForNow takes nothing').to.equal(0);
      one.core.released(a, one.now, 'halted');
      one.core.wake(a, one.now);
      expect(one.core.grantNow(a, 0, one.now)).to.equal(true);
      expect(a.lp).to.equal(0);
      one.check();
      // With another VP ready for that LP, the decision is the tick's.
      one.add(1, 1, {});
      expect(one.core.lpForNow(a, one.now, true), 'another VP waits').to.equal(-1);
    });

    it('keeps the LP invariants through random halts, shortcut wakes, suspensions and caps (seeded)', () => {
      const rand = rng(0xd15a7c);
      const sim = new Sim({ lps: 2, ackDelayNs: 100 * US });
      const vps: SchedVp[] = [];
      for (let p = 1; p <= 2; p++) for (let i = 0; i < 3; i++) vps.push(sim.add(p, i, { weight: 1 + Math.floor(rand() * 500), cap: rand() < 0.3 ? 0.3 : 1 }));
      let shortcuts = 0;
      for (let round = 0; round < 3000; round++) {
        sim.runFor(Math.floor(rand() * 3 * MS));
        const vp = vps[Math.floor(rand() * vps.length)];
        const r = rand();
        if (r < 0.35 && vp.lp >= 0 && !vp.preempting) sim.halt(vp);
        else if (r < 0.8 && vp.halted) {
          const before = [...sim.core.lpOwners()];
          const waiting = [...sim.core.all()].some((o) => o !== vp && o.lp < 0 && !o.halted && !o.capped && !o.partitionSuspended && !o.absent);
          // What the signalling path decides with before it wakes the VP: the same answer, and nothing changed.
          const predicted = sim.core.lpForNow(vp, sim.now, false);
          expect([...sim.core.lpOwners()], 'lpForNow changed no LP').to.deep.equal(before);
          sim.core.wake(vp, sim.now);
          const lp = sim.core.dispatchNow(vp, sim.now);
          expect(lp, 'lpForNow named the LP dispatchNow gave').to.equal(predicted);
          if (lp >= 0) {
            shortcuts++;
            expect(before[lp], 'the LP was free').to.equal(null);
            expect(lp).to.be.below(sim.core.activeLps);
            expect(waiting, 'nobody else was waiting').to.equal(false);
            expect(vp.capped).to.equal(false);
          }
          sim.check();
          sim.tick();
        } else if (r < 0.9) sim.suspend(vp, !vp.partitionSuspended);
      }
      expect(shortcuts, 'the shortcut was taken').to.be.greaterThan(30);
    });
  });
});
