/**
 * The nemesis's bookkeeping that needs no processes: what a link is set back to at a fault's end
 * (only what the fault set and the link still holds), fault ids going on from the log across
 * nemeses, and active.json read back by a later nemesis as the file it is — checked, never
 * trusted, never a reason to throw.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LinkView } from '@hvlab/protocol';
import { activeFile, faultLogFile, faultsDir, lastFaultNumber, Nemesis, restoreChange } from '../src/index.js';

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

  it('fault ids go on from the last one the log or the active file names', () => {
    expect(lastFaultNumber(home)).to.equal(0);
    writeFileSync(faultLogFile(home), ['{"event":"start","id":"f3"}', '{"event":"start","id":"chaos-x.f99"}', '{"event":"end","id":"f12"}', 'not json {"id":"f7"'].join('\n'));
    expect(lastFaultNumber(home)).to.equal(12);
    writeFileSync(activeFile(home), '[{"rec":{"id":"f40"}}]');
    expect(lastFaultNumber(home)).to.equal(40);
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

  it('a fault whose undo is under way stays listed as active until it is ended, never missing from both lists', async () => {
    const n = new Nemesis({ home });
    // An active fault with nothing to undo locally (as the nemesis holds one after an inject).
    const rec = (await (async () => {
      writeFileSync(activeFile(home), JSON.stringify([{ rec: { id: 'f5', kind: 'pause', target: 'vm:a' }, undo: {} }]));
      const probe = new Nemesis({ home });
      await probe.recoverLeftovers();
      return probe.list(true)[0]!;
    })());
    Object.assign(rec, { state: 'active', endedAt: null, endReason: null, error: null });
    const undo = { stopped: [], links: [], hostFaults: [], restart: [] };
    (n as unknown as { active: Map<string, unknown> }).active.set('f5', { rec, undo, timer: null, procs: [], holders: [], pending: false, cancelled: null, settled: Promise.resolve(), settle: () => {} });
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
});
