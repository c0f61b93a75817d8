/** prewarmProcess runs without throwing; its steps are best effort: one that throws neither escapes nor stops the steps after it. collectGarbage collects. */
import { expect } from 'chai';
import { collectGarbage, prewarmProcess, runBestEffort } from '../src/index.js';

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

describe('collectGarbage', () => {
  it('runs a full collection: an object reachable only through a WeakRef is gone after it', async () => {
    let ref: WeakRef<object> | null = null;
    // Made in its own task: a WeakRef keeps its target alive until the job that made it ends.
    await new Promise<void>((r) => setImmediate(() => {
      ref = new WeakRef({ big: new Array(1000).fill(1) });
      r();
    }));
    await new Promise((r) => setImmediate(r));
    const ms = collectGarbage();
    expect(ms, 'the collection could be run here').to.be.a('number');
    expect(ms).to.be.at.least(0);
    expect(ref!.deref(), 'the unreachable object was collected').to.equal(undefined);
    // The function is kept: a second call works the same.
    expect(collectGarbage()).to.be.a('number');
  });
});
