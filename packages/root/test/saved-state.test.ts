/**
 * Unit tests of a saved state on disk (`readSavedState`, `decodeSavedVm`, the consumed marker): a
 * hand-edited `state.json` is untrusted input, so every field of the tree is checked (versions,
 * types, finite numbers, sizes, the memory checksum) and a bad one is rejected with an error that
 * names the file and the field; a saved state marked consumed is no Saved VM's any more.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SavedVpState } from '@hvlab/protocol';
import * as saved from '../src/saved-state.js';

const { readSavedState, writeSavedState, hasSavedState, sha256, SavedStateError } = saved;

const MEM = 64 * 1024;

function vp(): SavedVpState {
  return {
    registers: { Rip: 0x1000, Rsp: 0x8000, Rflags: 2 },
    apic: { irr: [0, 0, 0, 0, 0, 0, 0, 0], isr: [0, 0, 0, 0, 0, 0, 0, 0], aeoi: [0, 0, 0, 0, 0, 0, 0, 0], tpr: 0 },
    synic: { scontrol: 1, simp: 0x3000, siefp: 0x4000, sint: new Array<number>(16).fill(0x10000) },
    timers: [0, 1, 2, 3].map(() => ({ config: 0, count: 0, nextExpiry: 0 })),
    referenceTime: 123456,
    runState: 'Suspended',
    interceptPending: false,
  };
}

function state(memory: Uint8Array): saved.SavedVm {
  return {
    version: 2,
    savedAt: '2026-11-30T12:00:00.000Z',
    vm: { name: 'v', id: '3f2b8c1e-8d4a-4f7e-9b1a-2c3d4e5f6a7b', memoryBytes: MEM, vps: 2, workload: 'counter' },
    memory: { file: 'memory.bin', bytes: MEM, sha256: sha256(memory) },
    partition: { referenceTime: 123456, vps: [vp(), vp()] },
    components: {
      vmbus: { version: 1, anything: 'checked by the VMBus server when it restores' },
      'device/cmos': { version: 1, index: 0, nvram: new Array<number>(128).fill(0), offsetMs: 0 },
      processor: { version: 1, reserve: 0, maximum: 100, weight: 100 },
    },
  };
}

describe('saved state on disk', () => {
  let dir = '';
  const memory = new Uint8Array(MEM).map((_, i) => i & 0xff);
  const expectVm = { memoryBytes: MEM, vps: 2 };
  const stateFile = (): string => join(dir, 'v.saved', 'state.json');
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-saved-test-'));
    writeSavedState(dir, 'v', state(memory), memory);
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** Edits state.json as text (so a value JSON cannot carry, like 1e999, is what the file holds). */
  const edit = (f: (text: string) => string): void => writeFileSync(stateFile(), f(readFileSync(stateFile(), 'utf8')));
  const editTree = (f: (t: Record<string, any>) => void): void => edit((text) => {
    const t = JSON.parse(text) as Record<string, any>;
    f(t);
    return JSON.stringify(t);
  });
  const rejection = (): Error => {
    try {
      readSavedState(dir, 'v', expectVm);
    } catch (e) {
      expect(e).to.be.instanceOf(SavedStateError);
      return e as Error;
    }
    throw new Error('the saved state was accepted');
  };

  it('reads back what was written', () => {
    const r = readSavedState(dir, 'v', expectVm);
    expect(r.state).to.deep.equal(state(memory));
    expect(new Uint8Array(r.memory)).to.deep.equal(memory);
  });

  it('rejects a non-finite or wrong-typed number, naming the file and the field', () => {
    edit((t) => t.replaceAll(/("referenceTime": *)123456/g, '$11e999'));
    const e = rejection();
    expect(e.message).to.include(stateFile());
    expect(e.message).to.match(/partition\.referenceTime/);
  });

  it('rejects each bad field of the tree, naming it', () => {
    const cases: Array<[(t: Record<string, any>) => void, RegExp]> = [
      [(t) => { t.version = 3; }, /version is 3/],
      [(t) => { t.version = 1; }, /older hvlab/],
      [(t) => { t.savedAt = 7; }, /savedAt/],
      [(t) => { t.vm.name = 'w'; }, /vm\.name/],
      [(t) => { t.vm.vps = 3; }, /VP count changed/],
      [(t) => { t.memory.file = '../../etc/passwd'; }, /memory\.file/],
      [(t) => { t.memory.bytes = 'many'; }, /memory\.bytes/],
      [(t) => { t.memory.sha256 = 'abc'; }, /memory\.sha256/],
      [(t) => { t.partition.vps = [vp()]; }, /partition\.vps/],
      [(t) => { t.partition.vps[1].timers = [null]; }, /partition\.vps\[1\]: .*timers/],
      [(t) => { t.partition.vps[0].apic.tpr = -1; }, /partition\.vps\[0\]: .*apic\.tpr/],
      [(t) => { t.components = []; }, /components is a list, not a map/],
      [(t) => { t.components['disk/0'] = {}; }, /"disk\/0", which is not a component id/],
      [(t) => { t.components['device/Bad Id'] = {}; }, /not a component id/],
      [(t) => { delete t.components.vmbus; }, /components\.vmbus is missing/],
      [(t) => { for (let i = 0; i < 80; i++) t.components[`device/d${i}`] = {}; }, /more than 66/],
      [(t) => { t.devices = {}; }, /"devices", which is unknown/],
      [(t) => { t.components.processor.weight = 0; }, /components\.processor\.weight/],
      [(t) => { t.components.processor.maximum = 1e999; }, /components\.processor\.maximum/],
      [(t) => { t.components.processor.version = 2; }, /components\.processor\.version/],
      [(t) => { delete t.partition; }, /partition is missing/],
    ];
    const original = readFileSync(stateFile(), 'utf8');
    for (const [f, re] of cases) {
      writeFileSync(stateFile(), original);
      editTree(f);
      const e = rejection();
      expect(e.message, String(f)).to.include(stateFile());
      expect(e.message, String(f)).to.match(re);
    }
  });

  it('rejects a memory file of the wrong size or content, naming it', () => {
    const memFile = join(dir, 'v.saved', 'memory.bin');
    writeFileSync(memFile, memory.subarray(0, MEM - 1));
    expect(rejection().message).to.include(memFile).and.match(/bytes, not 65536/);
    const changed = memory.slice();
    changed[100] ^= 1;
    writeFileSync(memFile, changed);
    expect(rejection().message).to.include(memFile).and.match(/checksum/);
  });

  it('a saved state marked consumed is no longer one to resume from, until it is given back', () => {
    expect(hasSavedState(dir, 'v')).to.equal(true);
    saved.markSavedStateConsumed(dir, 'v');
    expect(hasSavedState(dir, 'v')).to.equal(false);
    expect(saved.isSavedStateConsumed(dir, 'v')).to.equal(true);
    saved.unmarkSavedStateConsumed(dir, 'v');
    expect(hasSavedState(dir, 'v')).to.equal(true);
  });
});

describe('unfinished saves (NAME.saved.tmp-PID)', () => {
  it('are removed when their worker is gone, and kept while it lives; nothing else in the directory is touched', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-unfinished-'));
    try {
      for (const d of ['a.saved.tmp-4194305', `b.saved.tmp-${process.pid}`, 'c.saved', 'd.saved.tmp-x']) {
        mkdirSync(join(dir, d));
        writeFileSync(join(dir, d, 'memory.bin'), 'x');
      }
      writeFileSync(join(dir, 'e.json'), '{}');
      expect(saved.sweepUnfinishedSaves(dir)).to.deep.equal(['a.saved.tmp-4194305']);
      expect(readdirSync(dir).sort()).to.deep.equal([`b.saved.tmp-${process.pid}`, 'c.saved', 'd.saved.tmp-x', 'e.json']);
      expect(saved.unfinishedSaveDir(dir, 'b', process.pid)).to.equal(join(dir, `b.saved.tmp-${process.pid}`));
      expect(saved.sweepUnfinishedSaves(join(dir, 'missing'))).to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
