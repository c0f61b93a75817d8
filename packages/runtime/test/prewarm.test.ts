/** prewarmProcess runs without throwing; its steps are best effort: one that throws neither escapes nor stops the steps after it. */
import { expect } from 'chai';
import { prewarmProcess, runBestEffort } from '../src/index.js';

describe('prewarmProcess', () => {
  it('runs every step, even after one that throws, and throws nothing itself', () => {
    const ran: string[] = [];
    expect(() => runBestEffort([
      () => void ran.push('a'),
      () => {
        ran.push('b');
        throw new Error('a warm-up that fails');
      },
      () => void ran.push('c'),
    ])).to.not.throw();
    expect(ran).to.deep.equal(['a', 'b', 'c']);
    expect(() => prewarmProcess()).to.not.throw();
  });
});
