/** prewarmProcess: warming is best effort; a step that throws neither escapes nor stops the steps after it. */
import { expect } from 'chai';
import { prewarmProcess } from '../src/index.js';

describe('prewarmProcess', () => {
  it('runs the built-in warm-ups and every extra one, even after one that throws', () => {
    const ran: string[] = [];
    expect(() => prewarmProcess([
      () => void ran.push('a'),
      () => {
        ran.push('b');
        throw new Error('a warm-up that fails');
      },
      () => void ran.push('c'),
    ])).to.not.throw();
    expect(ran).to.deep.equal(['a', 'b', 'c']);
  });
});
