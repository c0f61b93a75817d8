/**
 * The warm pool's reading of a worker's stdout (readyLine): "ready" followed by a newline, in any
 * split of chunks, marks the worker loaded; other bytes of any length never do, and never make the
 * kept text grow (seeded fuzz).
 */
import { expect } from 'chai';
import { seededRandom } from '@hvlab/protocol';
import { readyLine } from '../src/warm.js';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('warm pool: a worker\'s ready line', () => {
  it('is seen whole, or split over chunks, after other output', () => {
    expect(readyLine('', bytes('ready\n')).ready).to.equal(true);
    let r = readyLine('', bytes('a warning\nrea'));
    expect(r.ready).to.equal(false);
    r = readyLine(r.seen, bytes('dy\n'));
    expect(r.ready).to.equal(true);
    expect(readyLine('', bytes('ready')).ready, 'no newline yet').to.equal(false);
    expect(readyLine('', bytes('not ready')).ready).to.equal(false);
  });

  it('random output never reads as ready, keeps at most 16 characters, and a line planted across two chunks is found (seeded, 5000 chunks)', () => {
    const next = seededRandom(0x7ea);
    const junk = (): Uint8Array => Uint8Array.from({ length: Math.floor(next() * 200) }, () => Math.floor(next() * 256));
    let seen = '';
    let planted = 0;
    for (let i = 0; i < 5000; i++) {
      if (i % 50 === 49) {
        // "ready\n" split at a random point between the end of one chunk and the start of the next.
        const cut = Math.floor(next() * 7);
        const a = readyLine(seen, Uint8Array.from([...junk(), ...bytes('ready\n'.slice(0, cut))]));
        const b = readyLine(a.seen, Uint8Array.from([...bytes('ready\n'.slice(cut)), ...junk()]));
        expect(a.ready || b.ready, `split at ${cut}`).to.equal(true);
        planted++;
        seen = '';
        continue;
      }
      const r = readyLine(seen, junk());
      expect(r.ready, 'random bytes').to.equal(false);
      expect(r.seen.length).to.be.at.most(16);
      seen = r.seen;
    }
    expect(planted).to.equal(100);
  });
});
