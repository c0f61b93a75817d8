/**
 * The nemesis's dealings with its roots, against a stand-in root (its `hostCall` answered here, a
 * host record written so the home has a host): the LP shrinks a host holds without a fault of the
 * nemesis (clearUnheld: what `fault clear` sends each root, and what it records).
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { hostPaths } from '@hvlab/runtime';
import type { World } from '../src/index.js';
import { FaultRefused, faultLogFile, faultsDir, Nemesis, UNNAMED_SHRINK_ID } from '../src/index.js';

const AT = 1_700_000_000_000;
const shrink = (id: string | null): Record<string, unknown> => ({ id, kind: 'lp-shrink', lps: 1, startedAt: AT, endsAt: AT + 60_000 });
type Call = [string, string, Record<string, unknown>];

describe('the nemesis and a stand-in root', () => {
  let home = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-roots-'));
    mkdirSync(faultsDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  const logLines = (): Array<Record<string, unknown>> => (existsSync(faultLogFile(home)) ? readFileSync(faultLogFile(home), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);

  /**
   * A nemesis of a home with one host up ("local"), whose root answers faultList with `listed`
   * and faultClear with `clear(args)`; every call it is sent is kept in `calls`.
   */
  function withRoot(listed: Record<string, unknown>, clear: (args: Record<string, unknown>) => unknown): { n: Nemesis; calls: Call[] } {
    const paths = hostPaths(home);
    mkdirSync(dirname(paths.hostFile), { recursive: true });
    writeFileSync(paths.hostFile, JSON.stringify({ hostId: 'a1b2c3', home, pids: { hypervisor: process.pid, root: process.pid }, sockDir: join(home, 'sock'), lps: 2, startedAt: new Date(AT).toISOString() }));
    const n = new Nemesis({ home });
    const calls: Call[] = [];
    (n as unknown as { hostCall: (w: World, host: string, op: string, args: Record<string, unknown>) => Promise<unknown> }).hostCall = async (_w, host, op, args) => {
      calls.push([host, op, args]);
      if (op === 'faultList') return listed;
      if (op === 'faultClear') return clear(args);
      throw new Error(`the stand-in root has no ${op}`);
    };
    return { n, calls };
  }

  it('fault clear ends a shrink its root lists with a null id by faultClear "unnamed", and records it as "(unnamed)" (nothing ran this path)', async () => {
    const { n, calls } = withRoot({ host: [shrink(null)], vms: [], hostClear: true }, (a) => (a.unnamed === true ? { cleared: [null] } : { cleared: [] }));
    const ended = await n.clearEverything();
    expect(calls).to.deep.equal([['local', 'faultList', {}], ['local', 'faultClear', { unnamed: true }]]);
    expect(ended.map((r) => [r.id, r.kind, r.target, r.state, r.endReason, r.error, r.unheld])).to.deep.equal([
      [UNNAMED_SHRINK_ID, 'lp-shrink', 'host:local', 'ended', 'cleared', 'held by the host naming no fault (1 LP left)', true],
    ]);
    expect(n.list(true).map((r) => r.id)).to.deep.equal([UNNAMED_SHRINK_ID]);
    expect(logLines().map((l) => [l.event, l.id, l.reason, l.unheld])).to.deep.equal([['end', UNNAMED_SHRINK_ID, 'cleared', true]]);
  });

  it('a null id the root did not clear (gone meanwhile) makes no record', async () => {
    const { n, calls } = withRoot({ host: [shrink(null)], vms: [] }, () => ({ cleared: [] }));
    expect(await n.clearEverything()).to.deep.equal([]);
    expect(calls.map((c) => c[2])).to.deep.equal([{}, { unnamed: true }]);
    expect(logLines()).to.deep.equal([]);
  });

  it('fault clear leaves a named shrink it does not hold (another nemesis\'s f1, beside its VM fault f1); fault clear f1 ends the shrink alone, by faultClear "host"', async () => {
    // On the code before: faultClear { id: "f1" }, which ended the shrink and the VM's fault f1 too.
    const listed = { host: [shrink('f1')], vms: [{ vm: 'web', faults: [{ id: 'f1', kind: 'clock' }] }], hostClear: true };
    const { n, calls } = withRoot(listed, (a) => ({ cleared: a.id === 'f1' ? ['f1'] : [] }));
    expect(await n.clearEverything()).to.deep.equal([]);
    expect(calls, 'no clear was sent').to.deep.equal([['local', 'faultList', {}]]);
    const one = await n.clearById('f1');
    expect(calls.slice(1)).to.deep.equal([['local', 'faultList', {}], ['local', 'faultClear', { id: 'f1', host: true }]]);
    expect(one.map((r) => [r.id, r.error, r.unheld])).to.deep.equal([['f1', 'held by the host without a fault of this nemesis (1 LP left)', true]]);
  });

  it('a root before faultClear "host": its "unknown" is a shrink naming no fault, cleared by that id; a named one is cleared by its id only when no VM there has a fault of that id', async () => {
    const old = withRoot({ host: [shrink('unknown')], vms: [] }, (a) => ({ cleared: a.id === 'unknown' ? ['unknown'] : [] }));
    expect((await old.n.clearEverything()).map((r) => r.id)).to.deep.equal(['unknown']);
    expect(old.calls[1]).to.deep.equal(['local', 'faultClear', { id: 'unknown' }]);
    // A root that takes "host" lists a shrink naming no fault with a null id: its "unknown" is a fault's.
    const named = withRoot({ host: [shrink('unknown')], vms: [], hostClear: true }, () => ({ cleared: ['unknown'] }));
    expect(await named.n.clearEverything()).to.deep.equal([]);
    expect(named.calls).to.have.length(1);
    // An old root whose VM has a fault of that id too: nothing is sent, and the refusal says why.
    const shared = withRoot({ host: [shrink('f1')], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }] }, () => ({ cleared: ['f1'] }));
    const err = await shared.n.clearById('f1').then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(FaultRefused);
    expect((err as Error).message).to.equal('no fault f1 of this nemesis is active, and the LP shrink of that id a host holds was not ended: host local\'s root is older than a clear of its LP shrink alone, and a VM there holds a fault f1 too, which a clear of f1 would end: left to its deadline');
    expect(shared.calls.map((c) => c[1])).to.deep.equal(['faultList']);
    const alone = withRoot({ host: [shrink('f1')], vms: [] }, () => ({ cleared: ['f1'] }));
    expect((await alone.n.clearById('f1')).map((r) => r.id)).to.deep.equal(['f1']);
    expect(alone.calls[1]).to.deep.equal(['local', 'faultClear', { id: 'f1' }]);
  });
});
