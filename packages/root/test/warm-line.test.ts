/**
 * The warm pool's reading of a worker's stdout (WarmLines): "partition N" and "ready" lines, in
 * any split of chunks, are seen; other bytes of any length never read as either, and never make
 * the kept text grow (seeded fuzz).
 */
import { expect } from 'chai';
import { seededRandom } from '@hvlab/protocol';
import { WarmLines, type WarmEvent } from '../src/warm.js';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('warm pool: a worker\'s lines', () => {
  it('are seen whole, or split over chunks, after other output', () => {
    expect(new WarmLines().feed(bytes('ready\n'))).to.deep.equal([{ t: 'ready' }]);
    const l = new WarmLines();
    expect(l.feed(bytes('a warning\npartition 4'))).to.deep.equal([]);
    expect(l.feed(bytes('2\nrea'))).to.deep.equal([{ t: 'partition', id: 42 }]);
    expect(l.feed(bytes('dy\n'))).to.deep.equal([{ t: 'ready' }]);
    expect(new WarmLines().feed(bytes('ready')), 'no newline yet').to.deep.equal([]);
    expect(new WarmLines().feed(bytes('not ready\nready now\npartition 0\npartition -1\npartition 99999999999\npartition 7 \n'))).to.deep.equal([]);
    // A line longer than a line of the pool's is dropped whole, even when it ends in one.
    expect(new WarmLines().feed(bytes(`${'x'.repeat(100)}ready\nready\n`))).to.deep.equal([{ t: 'ready' }]);
  });

  it('random output never reads as a line of the pool, and lines planted across two chunks are found (seeded, 5000 chunks)', () => {
    const next = seededRandom(0x7ea);
    // Random bytes with no newline in them, so a planted line starts a line of its own.
    const junk = (): number[] => Array.from({ length: Math.floor(next() * 200) }, () => {
      const b = Math.floor(next() * 255);
      return b >= 10 ? b + 1 : b;
    });
    const l = new WarmLines();
    let planted = 0;
    for (let i = 0; i < 5000; i++) {
      if (i % 50 === 49) {
        const line = i % 100 === 99 ? 'ready\n' : `partition ${i}\n`;
        const want: WarmEvent = i % 100 === 99 ? { t: 'ready' } : { t: 'partition', id: i };
        const cut = Math.floor(next() * line.length);
        const a = l.feed(Uint8Array.from([...junk(), 10, ...bytes(line.slice(0, cut))]));
        const b = l.feed(Uint8Array.from([...bytes(line.slice(cut)), ...junk()]));
        expect([...a, ...b], `split at ${cut}`).to.deep.equal([want]);
        planted++;
        continue;
      }
      const chunk = Uint8Array.from(junk());
      if (next() < 0.3) chunk[Math.floor(next() * chunk.length)] = 10;
      expect(l.feed(chunk), 'random bytes').to.deep.equal([]);
    }
    expect(planted).to.equal(100);
  });
});
