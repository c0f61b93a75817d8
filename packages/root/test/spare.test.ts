/**
 * Spare workers' bookkeeping with stand-in processes (a node that waits for a line on stdin and
 * exits at its end): `size` are kept; a take hands out a live one whose stdin is open and brings a
 * replacement after the refill delay; one that dies while waiting is replaced; a dead one is never
 * handed out; a spawn that throws leaves none and says so; closing ends every waiting one and
 * leaves the taken ones alone.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { pidAlive } from '@hvlab/runtime';
import { SPARE_REFILL_DELAY_MS, SpareWorkers } from '../src/spare.js';

const WAITER = "process.stdin.on('data', (b) => { if (String(b).includes('\\n')) process.exit(7); }); process.stdin.on('end', () => process.exit(0));";
const standIn = (): ChildProcess => spawn(process.execPath, ['-e', WAITER], { stdio: ['pipe', 'ignore', 'ignore'] });

async function until(f: () => boolean, ms = 5000): Promise<boolean> {
  for (const t0 = Date.now(); Date.now() - t0 < ms;) {
    if (f()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return f();
}

describe('spare workers', function () {
  this.timeout(30000);
  const warnings: string[] = [];
  const log = { warn: (_o: object, m?: string) => void warnings.push(m ?? '') };
  const taken: ChildProcess[] = [];
  afterEach(() => {
    for (const c of taken.splice(0)) c.kill('SIGKILL');
    warnings.length = 0;
  });

  it('keeps size spares; a take hands out a live one with its stdin open and the spare is replaced after the refill delay', async () => {
    const s = new SpareWorkers({ size: 2, stderrLog: '/dev/null', hvEndpoint: 'ipc:///nowhere', log, spawnWorker: standIn });
    try {
      const first = s.pids;
      expect(first).to.have.length(2);
      const c = s.take()!;
      taken.push(c);
      expect(first).to.include(c.pid);
      expect(c.stdin!.writable).to.equal(true);
      expect(s.pids).to.have.length(1);
      const t0 = Date.now();
      expect(await until(() => s.pids.length === 2), 'refilled').to.equal(true);
      expect(Date.now() - t0, 'not before the refill delay').to.be.at.least(SPARE_REFILL_DELAY_MS - 20);
      expect(s.stats).to.include({ started: 3, taken: 1, died: 0 });
      // The taken one is the caller's: it reads its line (and exits 7, as the stand-in does).
      const code = new Promise((r) => c.once('exit', r));
      c.stdin!.write('{"config":{}}\n');
      expect(await code).to.equal(7);
    } finally {
      s.close();
    }
  });

  it('replaces a spare that dies while waiting, does not hand out a dead one, and closing ends every waiting one but not a taken one', async () => {
    const s = new SpareWorkers({ size: 1, stderrLog: '/dev/null', hvEndpoint: 'ipc:///nowhere', log, spawnWorker: standIn });
    const [p0] = s.pids;
    process.kill(p0!, 'SIGKILL');
    expect(await until(() => s.pids.length === 1 && s.pids[0] !== p0), 'replaced').to.equal(true);
    expect(s.stats.died).to.equal(1);
    expect(warnings).to.include('a spare VM worker died while waiting');
    const c = s.take()!;
    taken.push(c);
    expect(c.pid).to.not.equal(p0);
    // One whose death was seen is gone from the list: a take finds none until the replacement.
    expect(await until(() => s.pids.length === 1)).to.equal(true);
    const [p1] = s.pids;
    process.kill(p1!, 'SIGKILL');
    expect(await until(() => !s.pids.includes(p1!))).to.equal(true);
    const next = s.take();
    expect(next === null || next.pid !== p1, 'a dead spare is not handed out').to.equal(true);
    if (next) taken.push(next);
    expect(await until(() => s.pids.length === 1)).to.equal(true);
    const waiting = s.pids;
    s.close();
    expect(await until(() => waiting.every((p) => !pidAlive(p))), 'closing ends the waiting spares').to.equal(true);
    expect(pidAlive(c.pid!), 'a taken spare is not closed with the others').to.equal(true);
  });

  it('a hold (a start, an incoming migration) keeps the replacement from loading until it is released, then the refill delay runs', async () => {
    const s = new SpareWorkers({ size: 1, stderrLog: '/dev/null', hvEndpoint: 'ipc:///nowhere', log, spawnWorker: standIn });
    try {
      const release = s.hold();
      const again = s.hold();
      taken.push(s.take()!);
      await new Promise((r) => setTimeout(r, SPARE_REFILL_DELAY_MS * 3));
      expect(s.pids, 'held: no replacement').to.deep.equal([]);
      release();
      release(); // once counts
      await new Promise((r) => setTimeout(r, SPARE_REFILL_DELAY_MS * 2));
      expect(s.pids, 'still held by the second hold').to.deep.equal([]);
      const t0 = Date.now();
      again();
      expect(await until(() => s.pids.length === 1), 'refilled once released').to.equal(true);
      expect(Date.now() - t0).to.be.at.least(SPARE_REFILL_DELAY_MS - 20);
      // during() holds for the length of the work.
      taken.push(s.take()!);
      await s.during(async () => {
        await new Promise((r) => setTimeout(r, SPARE_REFILL_DELAY_MS * 2));
        expect(s.pids).to.deep.equal([]);
      });
      expect(await until(() => s.pids.length === 1)).to.equal(true);
    } finally {
      s.close();
    }
  });

  it('a spawn that throws leaves no spare and says so; take then answers null', () => {
    const s = new SpareWorkers({ size: 1, stderrLog: '/dev/null', hvEndpoint: 'ipc:///nowhere', log, spawnWorker: () => { throw new Error('EAGAIN'); } });
    try {
      expect(s.pids).to.deep.equal([]);
      expect(s.take()).to.equal(null);
      expect(warnings).to.include('could not start a spare VM worker; every start spawns its own');
    } finally {
      s.close();
    }
  });
});
