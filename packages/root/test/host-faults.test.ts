/**
 * A host's LP shrink as its root keeps it (HostFaults), with a stand-in for the hypervisor's
 * setLps and stats: one learnt from the hypervisor that names no fault is listed with a null id
 * (it was "unknown", which is also a fault id: a fault named so looked alike) and is ended by a
 * clear of everything, by faultClear `unnamed` (what the nemesis's clear of everything sends for
 * it) and, as ever, by a clear of any fault; one that names its fault is ended only by a clear of
 * everything or of that fault, never by `unnamed`, also when it is named "unknown".
 */
import { expect } from 'chai';
import { HostFaults } from '../src/host-faults.js';

describe('a host\'s LP shrink at its root', () => {
  const calls: Array<[number, number, string | null]> = [];
  const faults = (): HostFaults => new HostFaults(async (lps, forMs, fault) => {
    calls.push([lps, forMs, fault]);
    return { ok: true };
  }, 2, () => {});
  const stats = (fault: string | null) => async (): Promise<unknown> => ({ lpShrink: { lps: 1, remainingMs: 60_000, fault } });
  beforeEach(() => calls.splice(0));

  it('one that names no fault is listed with a null id, not as a fault id ("unknown"), and ended by a clear of the unnamed shrink, every LP given back', async () => {
    const f = faults();
    expect(await f.learn(stats(null))).to.deep.include({ id: null, kind: 'lp-shrink', lps: 1 });
    expect(f.list().map((x) => [x.id, x.lps])).to.deep.equal([[null, 1]]);
    expect(await f.clearUnnamed()).to.equal(true);
    expect(calls).to.deep.equal([[2, 0, null]]);
    expect(f.list()).to.deep.equal([]);
    expect(await f.clearUnnamed(), 'none left').to.equal(false);
  });

  it('one that names no fault is ended by a clear of everything, and by a clear of any fault, answered as null', async () => {
    const f = faults();
    await f.learn(stats(null));
    expect(await f.clear(null)).to.deep.equal([null]);
    await f.learn(stats(null));
    expect(await f.clear('f7')).to.deep.equal([null]);
    expect(calls).to.deep.equal([[2, 0, null], [2, 0, null]]);
    expect(f.list()).to.deep.equal([]);
  });

  it('one of a fault named "unknown" is listed by that id and is not taken for one that names no fault', async () => {
    const f = faults();
    await f.set('unknown', 1, 60_000);
    expect(f.list().map((x) => x.id)).to.deep.equal(['unknown']);
    expect(await f.clearUnnamed()).to.equal(false);
    expect(f.list().map((x) => x.id), 'still held').to.deep.equal(['unknown']);
    expect(await f.clear('unknown')).to.deep.equal(['unknown']);
    expect(calls).to.deep.equal([[1, 60_000, 'unknown'], [2, 0, null]]);
  });

  it('one that names its fault is ended by a clear of that fault or of everything, not of another', async () => {
    const f = faults();
    await f.learn(stats('f3'));
    expect(await f.clear('f4')).to.deep.equal([]);
    expect(f.list().map((x) => x.id)).to.deep.equal(['f3']);
    expect(await f.clear('f3')).to.deep.equal(['f3']);
    expect(f.list()).to.deep.equal([]);
    await f.learn(stats('f5'));
    expect(await f.clear(null)).to.deep.equal(['f5']);
    expect(calls).to.deep.equal([[2, 0, null], [2, 0, null]]);
  });
});
