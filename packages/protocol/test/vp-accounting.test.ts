/**
 * vpAccounting: how every observer (the hypervisor's vpStats, `bench sched`) reads a VP's run,
 * ready and wait time from its guest-writable page, brought up to now from the scheduler's last
 * publication, including a halt the VP made without a ring that the scheduler has not taken yet.
 */
import { expect } from 'chai';
import { Dispatch, VpPage, VpRegionHeader, VpRunState, firstRunOf, seededRandom, suspensionCounted, takeSuspensionNumber, vpAccounting, vpCpuPercent, vpPageOffset, vpRegionBytes } from '../src/index.js';

const MS = 1_000_000;

function page(state: number, o: { runMs?: number; waitMs?: number; accountedNs?: number } = {}) {
  const region = new SharedArrayBuffer(vpRegionBytes(1));
  const i32 = new Int32Array(region);
  const f64 = new Float64Array(region);
  const off = vpPageOffset(0);
  Atomics.store(i32, (off + VpPage.state) >> 2, state);
  f64[(off + VpPage.runMs) >> 3] = o.runMs ?? 0;
  f64[(off + VpPage.waitMs) >> 3] = o.waitMs ?? 0;
  f64[(off + VpPage.accountedNs) >> 3] = o.accountedNs ?? 0;
  return { region, i32, f64, off };
}

describe('vpAccounting: a VP page read as the scheduler left it, brought up to now', () => {
  const T = 1_000_000 * MS;

  it('adds the time since the last publication to the shown state only', () => {
    const r = page(VpRunState.Running, { runMs: 10, waitMs: 5, accountedNs: T });
    expect(vpAccounting(r.i32, r.f64, r.off, T + 30 * MS)).to.deep.equal({ state: 'Running', runMs: 40, readyMs: 0, waitMs: 5 });
    const w = page(VpRunState.Waiting, { runMs: 10, waitMs: 5, accountedNs: T });
    expect(vpAccounting(w.i32, w.f64, w.off, T + 30 * MS)).to.deep.equal({ state: 'Waiting', runMs: 10, readyMs: 0, waitMs: 35 });
  });

  it('a VP shown Running whose dispatch word says Halt ran until its release stamp and waits since', () => {
    const r = page(VpRunState.Running, { runMs: 10, accountedNs: T });
    Atomics.store(r.i32, (r.off + VpPage.dispatch) >> 2, Dispatch.Halt);
    new BigInt64Array(r.region, r.off + VpPage.releasedNs, 1)[0] = BigInt(T + 2 * MS);
    expect(vpAccounting(r.i32, r.f64, r.off, T + 5000 * MS)).to.deep.equal({ state: 'Waiting', runMs: 12, readyMs: 0, waitMs: 4998 });
    // A stamp before the publication or after now is bounded to what passed since.
    new BigInt64Array(r.region, r.off + VpPage.releasedNs, 1)[0] = BigInt(T - 50 * MS);
    expect(vpAccounting(r.i32, r.f64, r.off, T + 10 * MS).runMs).to.equal(10);
    new BigInt64Array(r.region, r.off + VpPage.releasedNs, 1)[0] = 2n ** 62n;
    expect(vpAccounting(r.i32, r.f64, r.off, T + 10 * MS)).to.deep.equal({ state: 'Waiting', runMs: 20, readyMs: 0, waitMs: 0 });
  });

  it('reads guest scribbles (NaN, negative, Infinity, an unknown state) as zeros, never as a throw', () => {
    for (const bad of [NaN, -1, Infinity, -Infinity]) {
      const r = page(99, { runMs: bad, waitMs: bad, accountedNs: bad });
      const a = vpAccounting(r.i32, r.f64, r.off, T);
      expect(a).to.deep.equal({ state: 'Absent', runMs: 0, readyMs: 0, waitMs: 0 });
    }
  });
});

describe('firstRunOf: the first dispatch of a VM\'s VPs, read from their guest-writable pages', () => {
  const at = (vp: number): number => (vpPageOffset(vp) + VpPage.firstRunNs) >> 3;
  it('is the earliest VP\'s, bounded by when the VPs were let run and now; null while none ran', () => {
    const f64 = new Float64Array(new SharedArrayBuffer(vpRegionBytes(3)));
    expect(firstRunOf(f64, 3, 100, 1000)).to.equal(null);
    f64[at(2)] = 500;
    f64[at(1)] = 400;
    expect(firstRunOf(f64, 3, 100, 1000)).to.equal(400);
    expect(firstRunOf(f64, 2, 100, 1000), 'only the VPs asked about').to.equal(400);
    expect(firstRunOf(f64, 1, 100, 1000)).to.equal(null);
    expect(firstRunOf(f64, 3, 450, 1000), 'not before they were let run').to.equal(450);
    expect(firstRunOf(f64, 3, 100, 300), 'not after now').to.equal(300);
  });
  it('takes whatever a guest wrote (seeded random words, NaN, infinities, negatives) without throwing, within its bounds', () => {
    const next = seededRandom(0xf1a7);
    const f64 = new Float64Array(new SharedArrayBuffer(vpRegionBytes(4)));
    const u32 = new Uint32Array(f64.buffer);
    const odd = [NaN, Infinity, -Infinity, -1, 0, -0, Number.MAX_VALUE, 5e-324];
    for (let i = 0; i < 2000; i++) {
      for (let vp = 0; vp < 4; vp++) {
        const k = at(vp);
        if (next() < 0.3) f64[k] = odd[Math.floor(next() * odd.length)]!;
        else { u32[2 * k] = Math.floor(next() * 2 ** 32); u32[2 * k + 1] = Math.floor(next() * 2 ** 32); }
      }
      const t = firstRunOf(f64, 4, 1000, 2000);
      if (t !== null) expect(t).to.be.within(1000, 2000);
    }
  });
});

describe('takeSuspensionNumber and suspensionCounted: the numbers of a partition\'s suspensions', () => {
  it('gives each number once, counting up from the word and skipping 0 where int32 wraps', () => {
    const region = new Int32Array(new SharedArrayBuffer(vpRegionBytes(1)));
    const w = VpRegionHeader.suspendAsked >> 2;
    expect([takeSuspensionNumber(region), takeSuspensionNumber(region)]).to.deep.equal([1, 2]);
    expect(Atomics.load(region, w)).to.equal(2);
    Atomics.store(region, w, -1);
    expect(takeSuspensionNumber(region), 'after -1 comes 1, not 0').to.equal(1);
    Atomics.store(region, w, 0x7fffffff);
    expect(takeSuspensionNumber(region), 'the count wraps').to.equal(-0x80000000);
  });

  it('counts a suspension taken once the taken word reaches it, across the wrap', () => {
    const region = new Int32Array(new SharedArrayBuffer(vpRegionBytes(1)));
    const t = VpRegionHeader.suspendTaken >> 2;
    Atomics.store(region, t, 5);
    expect([suspensionCounted(region, 4), suspensionCounted(region, 5), suspensionCounted(region, 6)]).to.deep.equal([true, true, false]);
    Atomics.store(region, t, -0x80000000);
    expect([suspensionCounted(region, 0x7fffffff), suspensionCounted(region, -0x7fffffff)]).to.deep.equal([true, false]);
  });
});

describe('a VP\'s CPU %', () => {
  it('is its run time\'s share of the wall time, at most 100, and 0 when the page cannot be right (a scribbled run time)', () => {
    expect(vpCpuPercent(1500, 1000, 1000)).to.equal(50);
    expect(vpCpuPercent(2004, 1000, 1000), 'sampling jitter past 100 shows 100').to.equal(100);
    expect(vpCpuPercent(8923, 1000, 1000), 'a VP cannot run 792 % of the time').to.equal(0);
    expect(vpCpuPercent(900, 1000, 1000), 'a run time that went back').to.equal(0);
    expect(vpCpuPercent(1500, 1000, 0)).to.equal(0);
    expect(vpCpuPercent(NaN, 1000, 1000)).to.equal(0);
    expect(vpCpuPercent(Infinity, 1000, 1000)).to.equal(0);
  });
});
