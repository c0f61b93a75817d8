/**
 * The nemesis's dealings with its roots, against a stand-in root (its `hostCall` answered here, a
 * host record written so the home has a host): the LP shrinks a host holds without a fault of the
 * nemesis (clearUnheld: what `fault clear` sends each root, and what it records), the undo of its
 * own LP shrink (undoRemote), and how a fault applied through a root that could not be asked ends
 * (recorded as failed; only a bit flip's own pre-check is a refusal without a record).
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { hostPaths } from '@hvlab/runtime';
import { MgmtCallError } from '@hvlab/host';
import { markTemporaryHome, TEMPORARY_HOME_FILE } from '@hvlab/cluster';
import { seededRandom } from '@hvlab/protocol';
import { BitflipRefused, FaultRefused, faultLogFile, faultsDir, MAX_OWNERS, Nemesis, refusedUnapplied, teardownFile, UNNAMED_SHRINK_ID, type FaultRecord, type World } from '../src/index.js';

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
   * (null: no answer) and faultClear with `clear(args)`; every call it is sent is kept in `calls`.
   */
  function withRoot(listed: Record<string, unknown> | null, clear: (args: Record<string, unknown>) => unknown, opts: { linger?: boolean; hypervisor?: number } = {}): { n: Nemesis; calls: Call[] } {
    const paths = hostPaths(home);
    mkdirSync(dirname(paths.hostFile), { recursive: true });
    const hv = opts.hypervisor ?? process.pid;
    writeFileSync(paths.hostFile, JSON.stringify({ hostId: 'a1b2c3', home, pids: { hypervisor: hv, root: hv }, sockDir: join(home, 'sock'), lps: 2, startedAt: new Date(AT).toISOString() }));
    const n = new Nemesis({ home, ...(opts.linger === undefined ? {} : { linger: opts.linger }) });
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
    return { n, calls };
  }

  /** A VM fault a nemesis before this one left in active.json: vmbus on web of the host "local". */
  const leftVmFault = (id: string): void => {
    writeFileSync(join(faultsDir(home), 'active.json'), JSON.stringify([{ rec: { id, kind: 'vmbus', target: 'vm:web', forMs: 600_000, startedAt: Date.now() }, undo: { hostFaults: [{ host: 'local', vm: 'web' }] } }]));
  };

  it('a VM fault whose root does not answer its clear is ending: listed active, kept in the active file, its clear by id refused as ending, a clear of everything says it; it ends once the root answers', async () => {
    let answers = false;
    const { n, calls } = withRoot({ host: [], vms: [], hostClear: true }, () => {
      if (!answers) throw new MgmtCallError('Timeout', 'the host did not answer "faultClear" within 5 s');
      return { cleared: ['f3'] };
    });
    leftVmFault('f3');
    expect(await n.recoverLeftovers()).to.equal(1);
    expect(n.list(false).map((r) => [r.id, r.state])).to.deep.equal([['f3', 'active']]);
    expect(n.list(false)[0]!.error).to.match(/the root of local did not answer the clear; asked again every 2 s/);
    expect(JSON.parse(readFileSync(join(faultsDir(home), 'active.json'), 'utf8')).map((x: { rec: { id: string } }) => x.rec.id), 'kept in the file').to.deep.equal(['f3']);
    expect(n.activeCount, 'the nemesis stays').to.equal(1);
    await n.clear('f3', null).then(() => expect.fail('refused'), (e: unknown) => expect((e as Error).message).to.match(/^fault f3 is ending: /));
    expect((await n.clear(null, null)).map((r) => [r.id, r.state])).to.deep.equal([['f3', 'active']]);
    // The root answers; the next retry ends it.
    answers = true;
    const lingering = (n as unknown as { lingering: Map<string, { lastTry: number }> }).lingering;
    for (const l of lingering.values()) l.lastTry = 0;
    (n as unknown as { retryLingering: () => void }).retryLingering();
    for (let i = 0; i < 100 && n.list(false).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(n.list(false)).to.deep.equal([]);
    const done = n.list(true).find((r) => r.id === 'f3')!;
    expect([done.state, done.endReason]).to.deep.equal(['ended', 'cleared']);
    expect(done.error).to.match(/its root answered the clear$/);
    expect(existsSync(join(faultsDir(home), 'active.json')), 'nothing left in the file').to.equal(false);
    expect(calls.filter((c) => c[1] === 'faultClear').length).to.equal(2);
    expect(logLines().filter((l) => l.id === 'f3').map((l) => l.event)).to.deep.equal(['end-unanswered', 'end']);
  });

  it('a VM fault on a host whose hypervisor is gone ends at once (its workers went with it), and a nemesis that does not stay (down\'s) leaves an unanswered one to its deadline', async () => {
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const a = withRoot({ host: [], vms: [], hostClear: true }, () => {
      throw new MgmtCallError('HostGone', 'the hypervisor exited while "faultClear" was pending');
    }, { hypervisor: Number(gone.stdout) });
    leftVmFault('f4');
    expect(await a.n.recoverLeftovers()).to.equal(1);
    expect(a.n.list(false), 'not ending').to.deep.equal([]);
    expect(existsSync(join(faultsDir(home), 'active.json'))).to.equal(false);
    const b = withRoot({ host: [], vms: [], hostClear: true }, () => {
      throw new MgmtCallError('Timeout', 'the host did not answer "faultClear" within 5 s');
    }, { linger: false });
    leftVmFault('f5');
    expect(await b.n.recoverLeftovers()).to.equal(1);
    expect(b.n.list(false)).to.deep.equal([]);
    expect(b.n.list(true)[0]!.error).to.match(/its root did not answer the clear: the fault holds there until its deadline/);
    expect(existsSync(join(faultsDir(home), 'active.json')), 'the file goes with down').to.equal(false);
  });

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

  /**
   * The nemesis's undo of its own lp-shrink f1 on "local" (undoRemote): a root that clears a host
   * shrink alone is asked so, never by the id alone, which also ends every VM fault of that id on
   * the host (another nemesis's, numbered f1, f2… as this one's are). The calls and the problems.
   */
  async function undo(listed: Record<string, unknown> | null, clear: (args: Record<string, unknown>) => unknown = () => ({ cleared: ['f1'] })): Promise<{ calls: Call[]; problems: string[] }> {
    const { n, calls } = withRoot(listed, clear);
    const rec = { id: 'f1', kind: 'lp-shrink', target: 'host:local', state: 'active' } as unknown as FaultRecord;
    const act = { rec, undo: { stopped: [], links: [], hostFaults: [{ host: 'local', vm: null }], restart: [] } };
    const problems = await (n as unknown as { undoRemote: (w: World | null, a: unknown) => Promise<string[]> }).undoRemote(null, act);
    return { calls, problems };
  }

  it('its own shrink\'s undo: a root that clears a host shrink alone is asked to end f1 so (faultClear host), never by the id alone', async () => {
    // On the code before: faultClear { id: "f1", vm: null }, which also ended a VM's fault f1 there.
    const r = await undo({ host: [shrink('f1')], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }], hostClear: true });
    expect(r.calls).to.deep.equal([['local', 'faultList', {}], ['local', 'faultClear', { id: 'f1', host: true }]]);
    expect(r.problems).to.deep.equal([]);
  });

  it('its own shrink\'s undo at an older root: by the id only when none of its VMs holds a fault of that id; else left to its deadline, said', async () => {
    const alone = await undo({ host: [shrink('f1')], vms: [{ vm: 'web', faults: [{ id: 'f2' }] }] });
    expect(alone.calls.slice(1)).to.deep.equal([['local', 'faultClear', { id: 'f1' }]]);
    expect(alone.problems).to.deep.equal([]);
    const shared = await undo({ host: [shrink('f1')], vms: [{ vm: 'web', faults: [{ id: 'f1' }] }] });
    expect(shared.calls.map((c) => c[1]), 'no clear sent').to.deep.equal(['faultList']);
    expect(shared.problems).to.have.length(1);
    expect(shared.problems[0]).to.match(/^local: host local's root is older .* left to its deadline$/);
  });

  it('its own shrink\'s undo at a root whose list does not come: asked to end it alone; one that refuses that (older) leaves it to its deadline, said', async () => {
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

describe('a fault applied through a root that could not be asked', () => {
  let home = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-roots-'));
    mkdirSync(faultsDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  // Host h2 is in the world and not up (no host record): the nemesis's own mgmt() says so.
  const world = (): World => ({ cluster: 'c', hosts: [{ name: 'h2', hostId: null, paths: hostPaths(join(home, 'h2')) }], processes: [], vms: [{ host: 'h2', vm: 'tiny' }], links: [] });
  const rec = (id: string, kind: 'lp-shrink' | 'bitflip', params: Record<string, unknown>): FaultRecord => ({
    id, kind, target: kind === 'lp-shrink' ? 'host:h2' : 'vm:tiny', role: null, params, owner: null, seed: 43, forMs: kind === 'bitflip' ? 0 : 60_000,
    resolved: { summary: kind === 'lp-shrink' ? 'host h2' : 'VM tiny on h2', hosts: ['h2'], vms: kind === 'lp-shrink' ? [] : [{ host: 'h2', vm: 'tiny' }], processes: [], links: [] },
    state: 'active', startedAt: AT, endsAt: AT + 60_000, endedAt: null, endReason: null, error: null, effect: null,
  });
  /** Applies `r` as a pending fault the nemesis numbered itself (f1), as inject does. */
  async function apply(n: Nemesis, r: FaultRecord): Promise<unknown> {
    const inner = n as unknown as { active: Map<string, unknown>; next: number; applyRemote: (w: World, act: unknown) => Promise<void> };
    let settle = (): void => {};
    const settled = new Promise<void>((res) => (settle = res));
    const act = { rec: r, undo: { stopped: [], links: [], hostFaults: [], restart: [] }, timer: null, procs: [], holders: [], holderNames: [], pending: true, cancelled: null, autoId: true, settled, settle };
    inner.active.set(r.id, act);
    inner.next = 2;
    return await inner.applyRemote(world(), act).then(() => null, (e: unknown) => e);
  }
  const logLines = (): Array<Record<string, unknown>> => (existsSync(faultLogFile(home)) ? readFileSync(faultLogFile(home), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);

  it('an lp-shrink on a host that is not up is recorded as failed, logged, and keeps its number (it was taken as a refusal: no record, no line)', async () => {
    const n = new Nemesis({ home });
    const err = await apply(n, rec('f1', 'lp-shrink', { lps: 1 }));
    expect((err as Error).message).to.equal('host h2 is not up');
    expect(n.list(true).map((r) => [r.id, r.state, r.error])).to.deep.equal([['f1', 'failed', 'host h2 is not up']]);
    expect(logLines().map((l) => [l.event, l.id, l.error])).to.deep.equal([['failed', 'f1', 'host h2 is not up']]);
    expect((n as unknown as { next: number }).next, 'f1 is not given out again').to.equal(2);
    // Whatever a FaultRefused says, only a bit flip's own pre-check is a refusal.
    const r = rec('f9', 'lp-shrink', { lps: 1 });
    r.effect = {};
    expect(refusedUnapplied(r, new FaultRefused('there is no host h3'))).to.equal(false);
    expect(refusedUnapplied(r, new BitflipRefused('GPA 0x300000 is outside VM tiny\'s guest RAM'))).to.equal(true);
    r.effect = { tiny: {} };
    expect(refusedUnapplied(r, new BitflipRefused('x')), 'after one VM took it').to.equal(false);
  });

  it('a bit flip without --gpa whose VM\'s memory its root did not say is refused, naming the VM and host: no record, no line, its number given back (it drew as if the memory were large: a 2M VM\'s dirty bitmap for seed 43)', async () => {
    const n = new Nemesis({ home });
    const err = await apply(n, rec('f1', 'bitflip', {}));
    expect(err).to.be.instanceOf(FaultRefused);
    expect((err as Error).message).to.equal('bitflip without --gpa: the memory of VM tiny on h2 (its root did not answer in time) is not known, and the GPA drawn from the seed depends on it; no VM was flipped: try again, or give --gpa');
    expect(n.list(true)).to.deep.equal([]);
    expect(logLines()).to.deep.equal([]);
    expect((n as unknown as { next: number }).next, 'f1 given back').to.equal(1);
  });
});

describe('the nemesis\'s owner leases', () => {
  let home = '';
  beforeEach(() => (home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-owners-'))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('a clear of an owner\'s faults keeps its lease while it names VMs it made (they go when it lapses: a run killed during its own clean-up leaves none), and ends one that names none', async () => {
    const n = new Nemesis({ home });
    n.renew('run-vms', false, [{ host: 'local', vm: 'w1', id: '3f2b8c1e-0a4d-4e5f-9a7b-1c2d3e4f5a6b' }]);
    n.renew('run-bare');
    await n.clear(null, 'run-vms');
    await n.clear(null, 'run-bare');
    expect(n.liveOwners, 'the one naming a VM').to.equal(1);
  });

  it('reads a teardown file as input: whatever it holds (seeded, 2000 cases) nothing throws, and only owner names are taken on', () => {
    markTemporaryHome(home);
    const rnd = seededRandom(20261207);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const values = (): unknown => pick<() => unknown>([
      () => 'run-1.home', () => 'x'.repeat(Math.floor(rnd() * 200)), () => '../etc', () => Math.floor(rnd() * 1e6), () => null, () => ({ a: 1 }),
      () => ['a', ['b']], () => '', () => 'ok:name_1.2-3', () => '\u0000x', () => true,
    ])();
    for (let i = 0; i < 2000; i++) {
      const list = Array.from({ length: Math.floor(rnd() * 6) }, values);
      let text = pick([JSON.stringify(list), JSON.stringify(values()), JSON.stringify({ owners: list })]);
      if (rnd() < 0.3) {
        const at = Math.floor(rnd() * (text.length + 1));
        text = text.slice(0, at) + pick(['', '{', '"', ']', '\\', '\uffff']) + text.slice(at + Math.floor(rnd() * 3));
      }
      mkdirSync(faultsDir(home), { recursive: true });
      writeFileSync(teardownFile(home), text);
      const n = new Nemesis({ home });
      let taken = -1;
      expect(() => (taken = n.recoverTeardown()), text).to.not.throw();
      const owners = [...(n as unknown as { teardownOwners: Set<string> }).teardownOwners];
      expect(owners.length, text).to.equal(taken);
      for (const o of owners) expect(o, text).to.match(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$/);
    }
  });

  it('refuses a teardown lease (its end takes the home down and removes it) on any home but a run\'s temporary one', () => {
    const n = new Nemesis({ home });
    // A user's home: one frame of any client would have had it removed ~5 s later.
    expect(() => n.renew('evil', true)).to.throw(FaultRefused, /is not a run's temporary home: no lease may take it down and remove it/);
    expect(n.holdsTeardown).to.equal(false);
    expect(n.liveOwners, 'no lease taken').to.equal(0);
    // A lease without teardown is as before.
    n.renew('cli');
    expect(n.liveOwners).to.equal(1);
    // A run's temporary home (its marker): taken, and renewed as before.
    markTemporaryHome(home);
    n.renew('run.home', true);
    expect(n.holdsTeardown).to.equal(true);
    // Kept in a file while held: a nemesis started after this one was killed takes it on.
    expect(JSON.parse(readFileSync(teardownFile(home), 'utf8'))).to.deep.equal(['run.home']);
    const next = new Nemesis({ home });
    expect(next.recoverTeardown()).to.equal(1);
    expect(next.holdsTeardown).to.equal(true);
    expect(next.liveOwners, 'as renewed now: it lapses unless its holder renews').to.equal(1);
    rmSync(join(home, TEMPORARY_HOME_FILE));
    expect(() => n.renew('run.home', true), 'a lease held renews').to.not.throw();
    // Not a temporary home any more: nothing of the file is taken on, and it goes.
    expect(new Nemesis({ home }).recoverTeardown()).to.equal(0);
    expect(existsSync(teardownFile(home))).to.equal(false);
    // Whatever the file holds, only owner names are taken.
    markTemporaryHome(home);
    for (const text of ['{', '7', '{"a":1}', JSON.stringify([1, null, '../x', 'ok', 'x'.repeat(200), { toString: 1 }])]) {
      writeFileSync(teardownFile(home), text);
      const m = new Nemesis({ home });
      expect(m.recoverTeardown(), text).to.equal(text.includes('"ok"') ? 1 : 0);
    }
  });

  it('are a bounded table: a new owner past MAX_OWNERS is refused while one held renews on (a renew flood under fresh names grew the process by ~100 MB)', () => {
    const n = new Nemesis({ home });
    for (let i = 0; i < MAX_OWNERS; i++) n.renew(`o${i}`);
    expect(n.liveOwners).to.equal(MAX_OWNERS);
    expect(() => n.renew('one-more')).to.throw(FaultRefused, /holds 1024 owners' leases/);
    expect(() => n.renew('o7')).to.not.throw();
    expect(n.liveOwners).to.equal(MAX_OWNERS);
  });
});
