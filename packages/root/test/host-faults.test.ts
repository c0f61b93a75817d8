/**
 * A host's LP shrink as its root keeps it (HostFaults), with a stand-in for the hypervisor's
 * setLps and stats: one learnt from the hypervisor that names no fault is listed with a null id
 * (it was "unknown", which is also a fault id: a fault named so looked alike) and is ended by a
 * clear of everything, by faultClear `unnamed` (what the nemesis's clear of everything sends for
 * it) and, as ever, by a clear of any fault; one that names its fault is ended only by a clear of
 * everything or of that fault, never by `unnamed`, also when it is named "unknown". A faultClear
 * `host` ends the shrink of its id alone, never a VM's fault of that id (which another nemesis,
 * numbering its faults f1, f2… too, may hold).
 */
import { expect } from 'chai';
import { faultClear, HostFaults, type VmFaultClears } from '../src/host-faults.js';

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

  it('faultClear "host" ends the shrink of its id and no VM\'s fault of that id; without it a clear of that id ends both (what ended another nemesis\'s VM fault f1)', async () => {
    const vmCalls: Array<[string, string | null]> = [];
    const vms: VmFaultClears = {
      faultClear: async (vm, id) => {
        vmCalls.push([vm, id]);
        return { cleared: id === null ? [] : [id] };
      },
      faultClearAll: async (id) => {
        vmCalls.push(['*', id]);
        return id === 'f1' ? ['f1'] : [];
      },
    };
    const f = faults();
    await f.set('f1', 1, 60_000);
    expect(await faultClear({ id: 'f2', host: true }, f, vms), 'another id').to.deep.equal({ cleared: [] });
    expect(await faultClear({ id: 'f1', host: true }, f, vms)).to.deep.equal({ cleared: ['f1'] });
    expect(vmCalls, 'no VM was asked').to.deep.equal([]);
    expect(f.list()).to.deep.equal([]);
    await f.learn(stats(null));
    expect(await faultClear({ id: 'f1', host: true }, f, vms), 'one that names no fault is not of that id').to.deep.equal({ cleared: [] });
    expect(f.list().map((x) => x.id)).to.deep.equal([null]);
    expect(await faultClear({ unnamed: true }, f, vms)).to.deep.equal({ cleared: [null] });
    expect(vmCalls).to.deep.equal([]);
    // The form without `host` (an old nemesis's) ends the VMs' faults of that id too.
    await f.set('f1', 1, 60_000);
    expect(await faultClear({ id: 'f1' }, f, vms)).to.deep.equal({ cleared: ['f1', 'f1'] });
    expect(vmCalls).to.deep.equal([['*', 'f1']]);
  });
});
