/**
 * vpAccounting: how every observer (the hypervisor's vpStats, `bench sched`) reads a VP's run,
 * ready and wait time from its guest-writable page, brought up to now from the scheduler's last
 * publication, including a halt the VP made without a ring that the scheduler has not taken yet.
 */
import { expect } from 'chai';
import { Dispatch, VpPage, VpRunState, vpAccounting, vpPageOffset, vpRegionBytes } from '../src/index.js';

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
