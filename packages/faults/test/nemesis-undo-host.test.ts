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

const AT = 1_700_000_000_000;
type Call = [string, string, Record<string, unknown>];

describe("the nemesis's undo of its own LP shrink", () => {
  let home = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-undo-'));
    mkdirSync(faultsDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  /** Undoes an active lp-shrink f1 on host "local" whose root answers faultList with `listed`; the calls it got. */
  async function undo(listed: Record<string, unknown> | null): Promise<Call[]> {
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
      if (op === 'faultClear') return { cleared: ['f1'] };
      throw new Error(`the stand-in root has no ${op}`);
    };
    const rec = { id: 'f1', kind: 'lp-shrink', target: 'host:local', state: 'active' } as unknown as FaultRecord;
    const act = { rec, undo: { stopped: [], links: [], hostFaults: [{ host: 'local', vm: null }], restart: [] } };
    const problems = await (n as unknown as { undoRemote: (w: World | null, a: unknown) => Promise<string[]> }).undoRemote(null, act);
    expect(problems).to.deep.equal([]);
    return calls;
  }

  it('a root that clears a host shrink alone is asked to end f1 so (faultClear host), never by the id alone', async () => {
    // On the code before: faultClear { id: "f1", vm: null }, which also ended a VM's fault f1 there.
    const calls = await undo({ host: [{ id: 'f1', kind: 'lp-shrink', lps: 1, startedAt: AT, endsAt: AT + 60_000 }], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }], hostClear: true });
    expect(calls).to.deep.equal([['local', 'faultList', {}], ['local', 'faultClear', { id: 'f1', host: true }]]);
  });

  it('a root before that, or one whose list does not come, is asked as before (by the id, for the host)', async () => {
    expect((await undo({ host: [], vms: [] })).slice(1)).to.deep.equal([['local', 'faultClear', { id: 'f1', vm: null }]]);
    expect((await undo(null)).slice(1)).to.deep.equal([['local', 'faultClear', { id: 'f1', vm: null }]]);
  });
});
