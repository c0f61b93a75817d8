/**
 * The partition process's start-up line (src/start.ts): what a VMWP writes is taken, each field of
 * the wrong type or range is refused by name, and random or mutated input only ever raises an
 * Error (the process then leaves with a line on stderr).
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { decodePartitionStartInput } from '../src/start.js';

const good = { home: '/h', hostId: 'abc123', hvPid: 10, partitionId: 3, vm: 'a', token: 'f'.repeat(64) };

describe('the partition start-up input decoder', () => {
  it('takes what a VMWP writes and refuses each field of the wrong type or range, naming it', () => {
    expect(decodePartitionStartInput(JSON.stringify(good))).to.deep.equal(good);
    const bad: Array<[string, unknown]> = [['hvPid', 0], ['hvPid', 1e999], ['partitionId', '3'], ['partitionId', -1], ['vm', ''], ['token', 'x'.repeat(300)], ['home', { toString: 1 }], ['hostId', null]];
    for (const [k, v] of bad) expect(() => decodePartitionStartInput(JSON.stringify({ ...good, [k]: v })), k).to.throw(Error, new RegExp(`field ${k}`));
    expect(() => decodePartitionStartInput(JSON.stringify({ ...good, extra: 1 }))).to.throw(/unknown field "extra"/);
    expect(() => decodePartitionStartInput('{')).to.throw(/not JSON/);
    expect(() => decodePartitionStartInput('[1]')).to.throw(/not a map/);
  });

  it('takes a held partition\'s go region, and refuses one without hold or of the wrong type', () => {
    const held = { ...good, hold: true, vps: 2, goRegion: 'hvlab-abc123-p3-go' };
    expect(decodePartitionStartInput(JSON.stringify(held))).to.deep.equal(held);
    expect(() => decodePartitionStartInput(JSON.stringify({ ...good, goRegion: 'hvlab-abc123-p3-go' }))).to.throw(/goRegion needs hold/);
    for (const v of ['', 'x'.repeat(201), 7, null]) expect(() => decodePartitionStartInput(JSON.stringify({ ...held, goRegion: v })), String(v)).to.throw(/field goRegion/);
  });

  it('never throws anything but an Error on random or mutated input', () => {
    const text = fc.oneof(
      fc.string(),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.tuple(fc.constantFrom(...Object.keys(good)), fc.jsonValue()).map(([k, v]) => JSON.stringify({ ...good, [k]: v })),
      fc.tuple(fc.constantFrom('hold', 'vps', 'goRegion'), fc.jsonValue()).map(([k, v]) => JSON.stringify({ ...good, hold: true, vps: 1, goRegion: 'r', [k]: v })),
    );
    fc.assert(fc.property(text, (t) => {
      try {
        decodePartitionStartInput(t);
      } catch (e) {
        return e instanceof Error && !(e instanceof TypeError);
      }
      return true;
    }), { numRuns: 3000 });
  });
});
