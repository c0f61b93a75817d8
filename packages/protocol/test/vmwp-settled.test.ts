/**
 * The VMWP's `settled` note (a pause, resume or save ended, with what the VM is now) and the
 * description's `pending` operation: a root that re-attached while one ran decides the VM's state
 * from them, so each is decoded by a checking decoder and nothing else is ever thrown.
 */
import { expect } from 'chai';
import { decodePendingOp, decodeVmwpFrame, encode, seededRandom, VmwpDecodeError, type VmwpFrame } from '../src/index.js';

const note = (body: Record<string, unknown>): Record<string, unknown> => ({ t: 'note', body });

describe('the settled note and pending operations of the VMWP control link', () => {
  it('decodes a settled note of each operation as it was sent', () => {
    for (const op of ['pause', 'resume', 'save']) {
      const n = note({ t: 'settled', op, ok: op !== 'save', suspended: true, saved: op === 'save' });
      expect(decodeVmwpFrame(encode(n))).to.deep.equal(n);
    }
  });

  it('refuses a settled note with an unknown operation or a field that is not a boolean, naming the field', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ t: 'settled', op: 'stop', ok: true, suspended: false, saved: false }, /field op is not pause, resume or save/],
      [{ t: 'settled', ok: true, suspended: false, saved: false }, /field op/],
      [{ t: 'settled', op: ['pause'], ok: true, suspended: false, saved: false }, /field op/],
      [{ t: 'settled', op: 'pause', ok: 1, suspended: false, saved: false }, /ok/],
      [{ t: 'settled', op: 'pause', ok: true, saved: false }, /suspended/],
      [{ t: 'settled', op: 'save', ok: true, suspended: true, saved: 'yes' }, /saved/],
    ];
    for (const [body, re] of cases) {
      let err: unknown;
      try {
        decodeVmwpFrame(encode(note(body)));
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(body)).to.be.instanceOf(VmwpDecodeError);
      expect((err as Error).message, JSON.stringify(body)).to.match(re);
    }
  });

  it('takes only the three operations as pending, whatever a description holds', () => {
    expect(['pause', 'resume', 'save'].map(decodePendingOp)).to.deep.equal(['pause', 'resume', 'save']);
    const hostile = { toString: () => { throw new Error('boom'); } };
    for (const v of [null, undefined, '', 'Pause', 'stop', 0, 1, true, [], {}, hostile, Buffer.from('pause')]) {
      expect(decodePendingOp(v), String(typeof v)).to.equal(null);
    }
  });

  it('only ever throws VmwpDecodeError on mutated settled notes, and an accepted one is sound (seeded fuzz)', () => {
    const next = seededRandom(0x5e77);
    const valid = ['pause', 'resume', 'save'].map((op) => encode(note({ t: 'settled', op, ok: true, suspended: op !== 'resume', saved: op === 'save' })));
    let settled = 0;
    for (let i = 0; i < 4000; i++) {
      const b = Array.from(valid[Math.floor(next() * valid.length)]!);
      for (let k = 0, n = 1 + Math.floor(next() * 3); k < n; k++) {
        const pos = Math.floor(next() * b.length);
        const op = Math.floor(next() * 3);
        if (op === 0) b[pos] = Math.floor(next() * 256);
        else if (op === 1) b.splice(pos, 0, Math.floor(next() * 256));
        else b.splice(pos, 1);
      }
      let f: VmwpFrame;
      try {
        f = decodeVmwpFrame(Uint8Array.from(b));
      } catch (e) {
        expect(e, String(e)).to.be.instanceOf(VmwpDecodeError);
        continue;
      }
      if (f.t === 'note' && f.body.t === 'settled') {
        settled++;
        expect(['pause', 'resume', 'save']).to.include(f.body.op);
        for (const k of ['ok', 'suspended', 'saved'] as const) expect(f.body[k]).to.be.a('boolean');
      }
    }
    // Mutations that keep the note whole (a boolean flipped, a byte of a padding) are accepted.
    expect(settled, 'some mutated notes still decode').to.be.above(0);
  });
});
