/**
 * A bit flip's address without --gpa (bitflip.ts): the default draw stays inside the smallest
 * VM's guest RAM while every seed that worked keeps its page and bit.
 */
import { expect } from 'chai';
import { bitflipGpaProblem, dirtyBitmapGpa, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, seededRandom, WORKLOAD_DATA_GPA } from '@hvlab/protocol';
import { bitflipDefault, bitflipDefaultPages, workloadDataPages, type BitflipTarget } from '../src/index.js';

const M = 1024 * 1024;
/** The nemesis's pick before this file: page floor(r * 256) of the workload data, then the bit. */
function oldPick(seed: number, mask?: number): { gpa: number; mask: number } {
  const rnd = seededRandom(seed);
  const page = Math.floor(rnd() * 256);
  return { gpa: WORKLOAD_DATA_GPA + page * 4096, mask: mask ?? 1 << (1 + Math.floor(rnd() * 7)) };
}
const target = (vm: string, memoryBytes: number | null, host = 'local'): BitflipTarget => ({ vm, host, where: `VM ${vm} on ${host}`, memoryBytes });

describe('a bit flip\'s address without --gpa', () => {
  it('without --gpa, a 2M VM\'s draw is inside its guest RAM for every seed (page 255 of the 256 holds its dirty bitmap: 1 seed in 256 failed)', () => {
    expect(workloadDataPages(MIN_MEMORY_BYTES), 'a 2M VM').to.equal(255);
    const pages = bitflipDefaultPages([target('tiny', MIN_MEMORY_BYTES), target('big', 64 * M)]);
    expect(pages).to.deep.equal({ pages: 255 });
    let wasOutside = 0;
    const seen = new Set<number>();
    for (let seed = 0; seed < 20000; seed++) {
      const { gpa, mask } = bitflipDefault(seed, undefined, 255);
      expect(bitflipGpaProblem(gpa, 'tiny', MIN_MEMORY_BYTES), `seed ${seed}`).to.equal(null);
      expect(gpa, `seed ${seed}`).to.be.below(dirtyBitmapGpa(MIN_MEMORY_BYTES));
      expect([2, 4, 8, 16, 32, 64, 128]).to.include(mask);
      seen.add(gpa);
      if (oldPick(seed).gpa >= dirtyBitmapGpa(MIN_MEMORY_BYTES)) wasOutside++;
    }
    expect(wasOutside, 'seeds the old pick put on the dirty bitmap').to.be.greaterThan(40);
    expect(seen.size, 'every one of the 255 pages is drawn').to.equal(255);
    // Seed 43 picked page 255 (0x1ff000): the e2e test's seed.
    expect(oldPick(43).gpa).to.equal(0x1ff000);
    expect(bitflipDefault(43, undefined, 255).gpa).to.be.below(0x1ff000);
  });

  it('without --gpa, a VM of 256 pages of data or more draws what it drew before for every seed, and a 2M VM keeps every page that was inside it', () => {
    // Pinned: the same seed gives the same fault as a report made before (GPA and bit).
    const pinned: Array<[number, number, number]> = [[1, 0x1a0000, 2], [5, 0x1b0000, 64], [42, 0x199000, 16], [1234, 0x112000, 32], [99999, 0x1fa000, 16], [43, 0x1ff000, 4]];
    for (const [seed, gpa, mask] of pinned) {
      expect(oldPick(seed), `the old formula, seed ${seed}`).to.deep.equal({ gpa, mask });
      for (const mem of [16 * M, 2 * M + 4096, 3 * M, MAX_MEMORY_BYTES]) {
        const pages = bitflipDefaultPages([target('big', mem)]);
        expect(pages, `${mem} bytes`).to.not.have.property('problem');
        expect(bitflipDefault(seed, undefined, (pages as { pages: number }).pages), `seed ${seed}, ${mem} bytes`).to.deep.equal({ gpa, mask });
      }
      expect(bitflipDefault(seed, undefined, null), `seed ${seed}, memory not known`).to.deep.equal({ gpa, mask });
      expect(bitflipDefault(seed, 1, 256), 'a mask given is kept').to.deep.equal({ gpa, mask: 1 });
    }
    for (let seed = 0; seed < 20000; seed++) {
      const old = oldPick(seed);
      expect(bitflipDefault(seed, undefined, 256), `seed ${seed}`).to.deep.equal(old);
      if (old.gpa < dirtyBitmapGpa(MIN_MEMORY_BYTES)) expect(bitflipDefault(seed, undefined, 255), `seed ${seed} on a 2M VM`).to.deep.equal(old);
    }
  });
});
