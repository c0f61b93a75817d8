/**
 * The nemesis's bookkeeping that needs no processes: what a link is set back to at a fault's end
 * (only what the fault set and the link still holds), fault ids going on from the log across
 * nemeses, and active.json read back by a later nemesis as the file it is — checked, never
 * trusted, never a reason to throw.
 */
import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FAULT_ID_RE, FAULT_KINDS, decodeLinkChange, seededRandom, type LinkView } from '@hvlab/protocol';
import { activeFile, decodeActiveFile, faultLogFile, faultOrder, faultsDir, heldLinks, lastFaultNumber, Nemesis, restoreChange, rootHostFaults, UNNAMED_SHRINK_ID, unheldHostFaults, untilStopped, processState, processStart } from '../src/index.js';

const view = (o: Partial<LinkView>): LinkView => ({ a: 'h1', b: 'h2', cut: false, seed: 5, bytes: [0, 0], lost: 0, connections: 0, ...o });

describe('nemesis bookkeeping', () => {
  let home = '';
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'hvlab-nemesis-unit-'));
    mkdirSync(faultsDir(home), { recursive: true });
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it('a link is set back only in what the fault set and the link still holds', () => {
    const before = { delayMs: 7, jitterMs: null, rateBps: null, lossPercent: null, seed: 1 };
    const set = { delayMs: 50, lossPercent: 5, seed: 9 };
    // Untouched since: what the fault set goes back, the rest is left alone.
    expect(restoreChange({ before, set }, view({ delayMs: 50, lossPercent: 5, jitterMs: 2, seed: 9 }))).to.deep.equal({ delayMs: 7, lossPercent: null, seed: 1 });
    // The delay was changed by hand meanwhile (and the seed with it): that stays.
    expect(restoreChange({ before, set }, view({ delayMs: 3, lossPercent: 5, seed: 4 }))).to.deep.equal({ lossPercent: null });
    // A link reset meanwhile: nothing to set back.
    expect(restoreChange({ before, set }, view({ seed: 4 }))).to.deep.equal({});
    // No view of the link (the fabric did not answer): what the fault set goes back.
    expect(restoreChange({ before, set }, undefined)).to.deep.equal({ delayMs: 7, lossPercent: null, seed: 1 });
    // An older record without `set`: everything goes back, as before.
    expect(restoreChange({ before }, view({ delayMs: 3 }))).to.deep.equal(before);
  });

  it('a root\'s list of its host\'s LP shrinks is read as the shrinks it holds, one that names no fault with a null id: an entry of another shape is left out', () => {
    const at = 1_700_000_000_000;
    const shrink = { id: null, kind: 'lp-shrink', lps: 1, startedAt: at, endsAt: at + 5000 };
    expect(rootHostFaults({ host: [shrink], vms: [] })).to.deep.equal([{ id: null, lps: 1, startedAt: at, endsAt: at + 5000 }]);
    // A root before the null id listed such a shrink as "unknown": read as that id, as it said it.
    expect(rootHostFaults({ host: [{ ...shrink, id: 'unknown' }] })).to.deep.equal([{ id: 'unknown', lps: 1, startedAt: at, endsAt: at + 5000 }]);
    for (const bad of [{ ...shrink, kind: 'pause' }, { ...shrink, id: '../x' }, { ...shrink, id: undefined }, { ...shrink, id: '(unnamed)' }, { ...shrink, lps: 0 }, { ...shrink, lps: 1.5 }, { ...shrink, endsAt: -1 }, { ...shrink, startedAt: 'now' }, null, 'lp-shrink']) {
      expect(rootHostFaults({ host: [bad, shrink] }), JSON.stringify(bad)).to.have.length(1);
    }
    for (const answer of [null, [], { host: 'x' }, { vms: [] }]) expect(rootHostFaults(answer)).to.deep.equal([]);
  });

  it('a shrink that names no fault is never taken for a fault of the nemesis, even one named "unknown" (the clear of everything passed it over), and its record\'s name is no fault id', () => {
    const at = 1_700_000_000_000;
    const unnamed = { id: null, lps: 1, startedAt: at, endsAt: at + 5000 };
    const named = (id: string): typeof unnamed | { id: string; lps: number; startedAt: number; endsAt: number } => ({ ...unnamed, id });
    const holds = (id: string): boolean => id === 'unknown' || id === 'f3';
    expect(unheldHostFaults([unnamed, named('f3'), named('lost1'), named('unknown')], holds).map((f) => f.id)).to.deep.equal([null, 'lost1']);
    expect(FAULT_ID_RE.test(UNNAMED_SHRINK_ID)).to.equal(false);
  });

  it('fault ids go on from the last one the log or the active file names', () => {
    expect(lastFaultNumber(home)).to.equal(0);
    writeFileSync(faultLogFile(home), ['{"event":"start","id":"f3"}', '{"event":"start","id":"chaos-x.f99"}', '{"event":"end","id":"f12"}', 'not json {"id":"f7"'].join('\n'));
    expect(lastFaultNumber(home)).to.equal(12);
    writeFileSync(activeFile(home), '[{"rec":{"id":"f40"}}]');
    expect(lastFaultNumber(home)).to.equal(40);
  });

  it('fault list\'s order is by start, then by id with its numbers compared as numbers, whatever order the faults were held or ended in', async () => {
    const rec = (id: string, startedAt: number): unknown => ({ rec: { id, kind: 'pause', target: 'vm:web', startedAt, endsAt: startedAt + 1000, resolved: { summary: 'x', hosts: [], vms: [] } }, undo: {} });
    // Ended in this order (a later nemesis undoes what the one before left, in the file's order).
    writeFileSync(activeFile(home), JSON.stringify([rec('f10', 5000), rec('f2', 9000), rec('f9', 5000), rec('a-mine', 5000), rec('f1', 1000)]));
    const n = new Nemesis({ home });
    await n.recoverLeftovers();
    expect(n.list(true).map((f) => f.id)).to.deep.equal(['f1', 'a-mine', 'f9', 'f10', 'f2']);
    expect([...n.list(true)].sort(faultOrder).map((f) => f.id), 'a sort of it changes nothing').to.deep.equal(['f1', 'a-mine', 'f9', 'f10', 'f2']);
  });

  it('a later nemesis keeps a process fault\'s role, and logs its end with the fields every line has', async () => {
    const start = 1_700_000_000_000;
    writeFileSync(activeFile(home), JSON.stringify([
      { rec: { id: 'f4', kind: 'pause', target: 'host:h1', role: 'root', owner: 'cli-1', forMs: 5000, startedAt: start, endsAt: start + 5000, resolved: { summary: 'root of h1 (pid 99999999)', hosts: ['h1'], vms: [] } }, undo: {} },
      // A role on a kind that takes none is not believed.
      { rec: { id: 'f5', kind: 'clock', target: 'vm:web', role: 'root', forMs: 5000, startedAt: start + 1, endsAt: start + 5001, resolved: { summary: 'VM web on h1', hosts: [], vms: [] } }, undo: {} },
    ]));
    const n = new Nemesis({ home });
    await n.recoverLeftovers();
    expect(n.list(true).map((f) => [f.id, f.role])).to.deep.equal([['f4', 'root'], ['f5', null]]);
    const lines = readFileSync(faultLogFile(home), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).to.include({ event: 'end', id: 'f4', startedAt: start, kind: 'pause', target: 'host:h1', role: 'root', summary: 'root of h1 (pid 99999999)', owner: 'cli-1', forMs: 5000, reason: 'cleared', recovered: true });
    expect(Object.keys(lines[1]!).slice(0, 10)).to.deep.equal(['time', 'event', 'id', 'startedAt', 'kind', 'target', 'role', 'summary', 'owner', 'forMs']);
    expect(lines[1]!.role).to.equal(null);
  });

  it('a clear of a fault that has ended says so and how, not that it never was', async () => {
    const start = 1_700_000_000_000;
    writeFileSync(activeFile(home), JSON.stringify([{ rec: { id: 'f4', kind: 'pause', target: 'vm:web', forMs: 5000, startedAt: start, endsAt: start + 5000, resolved: { summary: 'x', hosts: [], vms: [] } }, undo: {} }]));
    const n = new Nemesis({ home });
    await n.recoverLeftovers();
    const refusal = async (id: string): Promise<string> => {
      try {
        await n.clear(id, null);
      } catch (e) {
        return (e as Error).message;
      }
      return 'no refusal';
    };
    expect(await refusal('f4')).to.match(/^fault f4 has ended already \(cleared at \d\d:\d\d:\d\d\.\d{3}\): nothing to clear$/);
    expect(await refusal('f5')).to.equal('no active fault f5');
  });

  it('a later nemesis reads active.json as a file: anything in it is checked, nothing in it throws, and what it undid is reported once', async () => {
    const hostile: unknown[] = [
      null, 3, 'x', [], {}, { rec: null, undo: {} }, { rec: { id: '../x', kind: 'pause' }, undo: {} },
      { rec: { id: 'f1', kind: 'meteor' }, undo: {} },
      { rec: { id: 'f2', kind: 'pause', resolved: 5 }, undo: { stopped: [{ pid: 1, start: 0 }, { pid: 'x' }, null], links: [{ a: 1 }], hostFaults: [{ host: {} }] } },
      { rec: { id: 'f3', kind: 'link', target: 'x'.repeat(10_000), resolved: { summary: 7, vms: [{ host: 1 }] } }, undo: { links: 'no', hostFaults: null } },
    ];
    for (const text of ['{', '"a string"', '{"rec":1}', JSON.stringify(hostile)]) {
      writeFileSync(activeFile(home), text);
      const n = new Nemesis({ home });
      const undone = await n.recoverLeftovers();
      expect(() => readFileSync(activeFile(home)), 'active.json is taken away').to.throw();
      if (text === JSON.stringify(hostile)) {
        expect(undone).to.equal(2);
        const cleared = await n.clear(null, null);
        expect(cleared.map((r) => [r.id, r.state, r.endReason])).to.deep.equal([['f2', 'ended', 'cleared'], ['f3', 'ended', 'cleared']]);
        expect(cleared[1]!.target.length).to.equal(160);
        expect(cleared[0]!.error).to.match(/undone after the nemesis that held it was gone/);
        expect(await n.clear(null, null), 'reported once').to.deep.equal([]);
        expect(n.list(true).map((r) => r.id)).to.deep.equal(['f2', 'f3']);
      } else {
        expect(undone).to.equal(0);
      }
    }
  });

  it('a later nemesis undoes every local part left (stopped processes continued) before it asks any root: a root a pause stopped answers the VM faults\' clears then', async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      const pid = child.pid!;
      process.kill(pid, 'SIGSTOP');
      expect(await untilStopped([pid], 5000)).to.equal(true);
      // In the file's order a VM fault (its root's part) comes first, then the pause of that root.
      writeFileSync(activeFile(home), JSON.stringify([
        { rec: { id: 'f1', kind: 'vmbus', target: 'vm:web' }, undo: { hostFaults: [{ host: 'local', vm: 'web' }] } },
        { rec: { id: 'f2', kind: 'pause', target: 'host:local' }, undo: { stopped: [{ hostId: 'abc123', role: 'root', vm: null, pid, start: processStart(pid) }] } },
      ]));
      const n = new Nemesis({ home });
      const seen: string[] = [];
      (n as unknown as { undoRemote: (w: unknown, act: { rec: { id: string }; undo: { hostFaults: unknown[] } }) => Promise<string[]> }).undoRemote = async (_w, act) => {
        if (act.undo.hostFaults.length > 0) seen.push(`${act.rec.id}: the root ${processState(pid) === 'T' ? 'stopped' : 'running'}`);
        act.undo.hostFaults = [];
        return [];
      };
      expect(await n.recoverLeftovers()).to.equal(2);
      expect(seen).to.deep.equal(['f1: the root running']);
      expect(existsSync(activeFile(home)), 'nothing left in it').to.equal(false);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('active.json has one decoder: what the nemesis writes comes back, and whatever the file holds nothing throws and every entry it gives is sound (seeded, 3000 cases)', () => {
    const good = [{
      rec: { id: 'f7', kind: 'link', target: 'link:h1-h2', role: null, params: { delayMs: 50 }, owner: null, seed: 3, forMs: 1000, resolved: { summary: 'h1-h2', hosts: ['h1', 'h2'], vms: [{ host: 'h1', vm: 'a' }], processes: [], links: [] }, state: 'active', startedAt: 1, endsAt: 2, endedAt: null, endReason: null, error: null, effect: null },
      undo: {
        stopped: [{ hostId: 'abc123', role: 'vmwp', vm: 'a', pid: 4242, start: 99 }],
        links: [{ a: 'h1', b: 'h2', cut: true, wasCut: false, before: { delayMs: null, jitterMs: null, rateBps: null, lossPercent: null, seed: 1 }, set: { delayMs: 50, seed: 9 } }],
        hostFaults: [{ host: 'h1', vm: 'a' }, { host: 'h2', vm: null }],
        restart: [],
      },
    }];
    const back = decodeActiveFile(JSON.stringify(good));
    expect(back).to.have.length(1);
    expect(back[0]!.rec.id).to.equal('f7');
    expect(back[0]!.undo).to.deep.equal(good[0]!.undo);

    const next = seededRandom(0xac71);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
    const values: unknown[] = [null, 0, -1, 1, 1.5, 2 ** 60, NaN, '', 'x', 'f1', '../f2', true, [], {}, [{}], { toString: 1 }, { a: 'h1', b: 'h2', before: {} }, { pid: 7, start: 1 }, { delayMs: -5 }, { delayMs: 'x' }, { seed: 2 ** 40 }];
    const paths: Array<(d: Record<string, any>, v: unknown) => void> = [
      (d, v) => (d.rec = v), (d, v) => (d.undo = v), (d, v) => (d.rec.id = v), (d, v) => (d.rec.kind = v), (d, v) => (d.rec.resolved = v),
      (d, v) => (d.undo.stopped = v), (d, v) => (d.undo.stopped[0] = v), (d, v) => (d.undo.stopped[0].pid = v), (d, v) => (d.undo.stopped[0].start = v), (d, v) => (d.undo.stopped[0].role = v),
      (d, v) => (d.undo.links = v), (d, v) => (d.undo.links[0] = v), (d, v) => (d.undo.links[0].a = v), (d, v) => (d.undo.links[0].before = v), (d, v) => (d.undo.links[0].set = v),
      (d, v) => (d.undo.links[0].before.delayMs = v), (d, v) => (d.undo.hostFaults = v), (d, v) => (d.undo.hostFaults[1] = v), (d, v) => (d.undo.hostFaults[0].vm = v),
    ];
    for (let i = 0; i < 3000; i++) {
      let text: string;
      const r = next();
      if (r < 0.2) text = Buffer.from(Array.from({ length: Math.floor(next() * 120) }, () => Math.floor(next() * 256))).toString('latin1');
      else if (r < 0.3) text = JSON.stringify(pick(values)) ?? 'undefined';
      else if (r < 0.5) {
        const b = Buffer.from(JSON.stringify(good));
        for (let k = 1 + Math.floor(next() * 4); k > 0; k--) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
        text = b.toString('latin1');
      } else {
        const d = JSON.parse(JSON.stringify(good[0])) as Record<string, any>;
        try {
          pick(paths)(d, pick(values));
        } catch { /* a path through a value replaced before */ }
        text = JSON.stringify([d, pick(values)]);
      }
      let out: ReturnType<typeof decodeActiveFile> = [];
      expect(() => (out = decodeActiveFile(text)), text).to.not.throw();
      for (const { rec, undo } of out) {
        expect(FAULT_ID_RE.test(rec.id) && (FAULT_KINDS as readonly string[]).includes(rec.kind), text).to.equal(true);
        for (const p of undo.stopped) expect(Number.isSafeInteger(p.pid) && p.pid > 1 && Number.isFinite(p.start), text).to.equal(true);
        for (const l of undo.links) {
          expect(typeof l.a === 'string' && typeof l.b === 'string' && typeof l.cut === 'boolean' && typeof l.wasCut === 'boolean', text).to.equal(true);
          expect(decodeLinkChange(l.before).ok, text).to.equal(true);
          if (l.set) expect(decodeLinkChange(l.set).ok, text).to.equal(true);
        }
        for (const h of undo.hostFaults) expect(typeof h.host === 'string' && (h.vm === null || typeof h.vm === 'string'), text).to.equal(true);
        expect(undo.restart).to.deep.equal([]);
      }
    }
  });

  it('a FIFO (or a directory) where active.json or the fault log should be holds no reader: the next fault number, the held links and the recovery all go on', async () => {
    execFileSync('mkfifo', [activeFile(home)]);
    execFileSync('mkfifo', [faultLogFile(home)]);
    expect(lastFaultNumber(home)).to.equal(0);
    expect(heldLinks(home)).to.deep.equal([]);
    expect(await new Nemesis({ home }).recoverLeftovers()).to.equal(0);
    expect(existsSync(activeFile(home)), 'the FIFO is taken away, as a damaged file is').to.equal(false);
    mkdirSync(activeFile(home));
    expect(heldLinks(home)).to.deep.equal([]);
    expect(lastFaultNumber(home)).to.equal(0);
    expect(await new Nemesis({ home }).recoverLeftovers(), 'a directory is left alone').to.equal(0);
  });

  /**
   * Nemesis `n` holds fault `id` of `kind` as active, with `undo` (a record as the nemesis makes
   * one, read back from a file by a probe nemesis).
   */
  async function holdActive(n: Nemesis, id: string, kind: string, target: string, undo: Record<string, unknown>): Promise<void> {
    writeFileSync(activeFile(home), JSON.stringify([{ rec: { id, kind, target }, undo: {} }]));
    const probe = new Nemesis({ home });
    await probe.recoverLeftovers();
    const rec = probe.list(true)[0]!;
    Object.assign(rec, { state: 'active', endedAt: null, endReason: null, error: null });
    (n as unknown as { active: Map<string, unknown> }).active.set(id, { rec, undo: { stopped: [], links: [], hostFaults: [], restart: [], ...undo }, timer: null, procs: [], holders: [], pending: false, cancelled: null, settled: Promise.resolve(), settle: () => {} });
  }

  it('a fault whose undo is under way stays listed as active until it is ended, never missing from both lists', async () => {
    const n = new Nemesis({ home });
    // An active fault with nothing to undo locally (as the nemesis holds one after an inject).
    await holdActive(n, 'f5', 'pause', 'vm:a', {});
    // The roots' part of the undo (a faultClear to each root) takes its time here.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    (n as unknown as { undoRemote: () => Promise<string[]> }).undoRemote = async () => {
      await gate;
      return [];
    };
    const clearing = n.clear(null, null);
    await new Promise((r) => setTimeout(r, 20));
    expect(n.list(false).map((r) => [r.id, r.state]), 'still being undone').to.deep.equal([['f5', 'active']]);
    expect(n.list(true).map((r) => r.id)).to.deep.equal(['f5']);
    release();
    expect((await clearing).map((r) => [r.id, r.state])).to.deep.equal([['f5', 'ended']]);
    expect(n.list(false)).to.deep.equal([]);
    expect(n.list(true).map((r) => [r.id, r.state])).to.deep.equal([['f5', 'ended']]);
  });

  it('a fault being undone stays in the active file until its undo is over, whatever else writes the file meanwhile (a nemesis killed then leaves it to the next)', async () => {
    const n = new Nemesis({ home });
    await holdActive(n, 'f7', 'partition', 'host:h1', { links: [{ a: 'h1', b: 'h2', cut: true, before: {}, wasCut: false }] });
    // The link's heal takes its time (the fabric answers slowly).
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    (n as unknown as { undoLocal: () => Promise<string[]> }).undoLocal = async () => {
      await gate;
      return [];
    };
    const ending = n.end('f7', 'cleared');
    await new Promise((r) => setTimeout(r, 20));
    // Another change writes the file meanwhile (as another fault's end would).
    (n as unknown as { persist: () => void }).persist();
    const ids = (): string[] => (existsSync(activeFile(home)) ? (JSON.parse(readFileSync(activeFile(home), 'utf8')) as Array<{ rec: { id: string } }>).map((x) => x.rec.id) : []);
    expect(ids(), 'still to heal').to.deep.equal(['f7']);
    release();
    expect((await ending)?.state).to.equal('ended');
    expect(ids(), 'healed').to.deep.equal([]);
  });

  it('a pause is active once its process shows as stopped (untilStopped): not while it runs, at once when stopped, and a gone process counts as stopped', async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      const pid = child.pid!;
      expect(await untilStopped([pid], 50), 'a running process is not stopped').to.equal(false);
      process.kill(pid, 'SIGSTOP');
      expect(await untilStopped([pid], 5000)).to.equal(true);
      expect(processState(pid)).to.equal('T');
      process.kill(pid, 'SIGCONT');
      expect(await untilStopped([2 ** 22 + 7], 50), 'no such process').to.equal(true);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
