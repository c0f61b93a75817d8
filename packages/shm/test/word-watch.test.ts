/**
 * Unit tests of watchWord: an event loop that waits on a shared futex word without blocking. A
 * child process (fixtures/word-waker.ts) changes the word and wakes it, round after round, and
 * waits for each answer; the callback here answers. Also: a watch stops calling after unwatch, a
 * throwing callback does not end the process, and bad arguments are refused.
 */
import { expect } from 'chai';
import { fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRegion, futexWake, unlinkRegion, watchWord, wordWatchAvailable, PAGE_SIZE } from '../src/index.js';
import { withUncaughtCaptured } from './uncaught.js';

const WAKER = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'word-waker.ts');
const name = `hvlab-ut-word-${process.pid}-${randomBytes(4).toString('hex')}`;

describe('watchWord (shared futex word, watched from the event loop)', function () {
  before(function () {
    if (!wordWatchAvailable()) this.skip();
  });
  afterEach(() => unlinkRegion(name));

  it('calls back for every change another process makes, without blocking the loop', async () => {
    const sab = createRegion(name, PAGE_SIZE);
    const w = new Int32Array(sab);
    const seen: number[] = [];
    const stop = watchWord(sab, 0, () => {
      const v = Atomics.load(w, 0);
      if (v !== Atomics.load(w, 1)) {
        seen.push(v);
        Atomics.store(w, 1, v);
        futexWake(sab, 1);
      }
    });
    // Timers keep running while the watch waits: the loop is not blocked.
    let ticks = 0;
    const t = setInterval(() => ticks++, 1);
    try {
      const child = fork(WAKER, [name, '200'], { execArgv: ['--import', 'tsx'], stdio: 'ignore' });
      const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
      expect(code).to.equal(0);
      expect(seen).to.deep.equal(Array.from({ length: 200 }, (_, i) => i + 1));
      expect(ticks).to.be.greaterThan(0);
    } finally {
      clearInterval(t);
      stop();
    }
  });

  it('stops calling after unwatch, and a throwing callback does not end the process', async () => {
    const sab = createRegion(name, PAGE_SIZE);
    const w = new Int32Array(sab);
    let calls = 0;
    await withUncaughtCaptured(async (errors) => {
      const stop = watchWord(sab, 3, () => {
        calls++;
        throw new Error('callback failed');
      });
      Atomics.add(w, 3, 1);
      futexWake(sab, 3);
      for (let i = 0; i < 200 && calls === 0; i++) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 5));
      expect(calls).to.equal(1);
      expect(errors).to.have.length(1);
      stop();
      stop(); // twice is harmless
      Atomics.add(w, 3, 1);
      futexWake(sab, 3);
      await new Promise((r) => setTimeout(r, 50));
      expect(calls).to.equal(1);
    });
  });

  it('refuses a word outside the buffer and a missing callback', () => {
    const sab = createRegion(name, PAGE_SIZE);
    expect(() => watchWord(sab, PAGE_SIZE / 4, () => {})).to.throw(/outside the buffer/);
    expect(() => watchWord(sab, -1, () => {})).to.throw(/outside the buffer/);
    expect(() => watchWord(sab, 0, null as unknown as () => void)).to.throw(/function/);
  });

  it('ends whenever it is ended: a watch ended while its thread is between its look at the stop flag and its sleep does not hold the join (3000 watches, in a child with a timeout)', function () {
    this.timeout(120000);
    const churn = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'watch-churn.ts');
    const r = spawnSync(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', churn, '3000'], { encoding: 'utf8', timeout: 60000 });
    expect(r.signal, `the churn hung (stderr: ${r.stderr})`).to.equal(null);
    expect(r.stdout).to.equal('done\n');
  });
});
