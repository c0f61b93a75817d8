/**
 * The end of the nemesis's own LP shrink (its undo, `undoRemote`), against a stand-in root: a root
 * that clears a host's shrink alone (`hostClear` in its faultList) is asked so, never by the id
 * alone, which also ends every VM fault of that id on the host (another nemesis's, numbered f1,
 * f2… as this one's are); a root before that is asked as before.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { hostPaths } from '@hvlab/runtime';
import { faultsDir, Nemesis, type FaultRecord, type World } from '../src/index.js';
import { MgmtCallError } from '@hvlab/host';

const AT = 1_700_000_000_000;
type Call = [string, string, Record<string, unknown>];

describe("the nemesis's undo of its own LP shrink", () => {
  let home = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-undo-'));
    mkdirSync(faultsDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  /**
   * Undoes an active lp-shrink f1 on host "local" whose root answers faultList with `listed` (null:
   * no answer) and faultClear with `clear`; the calls it got and the undo's problems.
   */
  async function undo(listed: Record<string, unknown> | null, clear: (args: Record<string, unknown>) => unknown = () => ({ cleared: ['f1'] })): Promise<{ calls: Call[]; problems: string[] }> {
    const paths = hostPaths(home);
    mkdirSync(dirname(paths.hostFile), { recursive: true });
    writeFileSync(paths.hostFile, JSON.stringify({ hostId: 'a1b2c3', home, pids: { hypervisor: process.pid, root: process.pid }, sockDir: join(home, 'sock'), lps: 2, startedAt: new Date(AT).toISOString() }));
    const n = new Nemesis({ home });
    const calls: Call[] = [];
    (n as unknown as { hostCall: (w: World, host: string, op: string, args: Record<string, unknown>) => Promise<unknown> }).hostCall = async (_w, host, op, args) => {
      calls.push([host, op, args]);
      if (op === 'faultList') {
        if (listed === null) throw new Error('no answer');
        return listed;
      }
      if (op === 'faultClear') return clear(args);
      throw new Error(`the stand-in root has no ${op}`);
    };
    const rec = { id: 'f1', kind: 'lp-shrink', target: 'host:local', state: 'active' } as unknown as FaultRecord;
    const act = { rec, undo: { stopped: [], links: [], hostFaults: [{ host: 'local', vm: null }], restart: [] } };
    const problems = await (n as unknown as { undoRemote: (w: World | null, a: unknown) => Promise<string[]> }).undoRemote(null, act);
    return { calls, problems };
  }
  const shrinkF1 = { id: 'f1', kind: 'lp-shrink', lps: 1, startedAt: AT, endsAt: AT + 60_000 };

  it('a root that clears a host shrink alone is asked to end f1 so (faultClear host), never by the id alone', async () => {
    // On the code before: faultClear { id: "f1", vm: null }, which also ended a VM's fault f1 there.
    const r = await undo({ host: [shrinkF1], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }], hostClear: true });
    expect(r.calls).to.deep.equal([['local', 'faultList', {}], ['local', 'faultClear', { id: 'f1', host: true }]]);
    expect(r.problems).to.deep.equal([]);
  });

  it('an older root is asked by the id only when none of its VMs holds a fault of that id; else the shrink is left to its deadline, said', async () => {
    const alone = await undo({ host: [shrinkF1], vms: [{ vm: 'web', faults: [{ id: 'f2' }] }] });
    expect(alone.calls.slice(1)).to.deep.equal([['local', 'faultClear', { id: 'f1' }]]);
    expect(alone.problems).to.deep.equal([]);
    const shared = await undo({ host: [shrinkF1], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }] });
    expect(shared.calls.map((c) => c[1]), 'no clear sent').to.deep.equal(['faultList']);
    expect(shared.problems).to.have.length(1);
    expect(shared.problems[0]).to.match(/^local: host local's root is older .* left to its deadline$/);
  });

  it('a root whose list does not come is asked to end the shrink alone; one that refuses that (older) leaves it to its deadline, said', async () => {
    const quiet = await undo(null);
    expect(quiet.calls.slice(1)).to.deep.equal([['local', 'faultClear', { id: 'f1', host: true }]]);
    expect(quiet.problems).to.deep.equal([]);
    const older = await undo(null, () => {
      throw new MgmtCallError('InvalidArgument', 'unknown argument host');
    });
    expect(older.calls.map((c) => c[1])).to.deep.equal(['faultList', 'faultClear']);
    expect(older.problems).to.deep.equal(['local: its LP shrink f1 could not be ended alone (its root is older, and its list did not come): left to its deadline']);
  });
});
