/**
 * Unit tests of `watchProcessExit`: a pidfd in the event loop that calls back once when a process
 * has exited, instead of polling its pid. The only time bound is mocha's: a watch that never fires,
 * or one that keeps its process alive, fails by timing out. Every child is killed in `afterEach`.
 * Skipped where this machine gives no pidfd (the callers then poll: see runtime's anchor.ts).
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidWatchUnavailableReason, watchProcessExit } from '../src/index.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
let children: ChildProcess[] = [];

function child(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: 'ignore', cwd: repo });
  c.on('error', () => undefined);
  children.push(c);
  return c;
}

const exited = (c: ChildProcess): Promise<number | null> =>
  new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(c.exitCode) : c.once('exit', (code) => r(code))));

describe('watchProcessExit (pidfd)', function () {
  before(function () {
    const why = pidWatchUnavailableReason();
    if (why) {
      this.skip();
    }
  });
  afterEach(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all(children.map(exited));
    children = [];
  });

  it('calls back once when the watched process is killed with SIGKILL', async () => {
    const c = child('sleep', ['60']);
    let calls = 0;
    const fired = new Promise<void>((r) => {
      const cancel = watchProcessExit(c.pid!, () => {
        calls++;
        r();
      });
      expect(cancel, pidWatchUnavailableReason()).to.not.equal(null);
    });
    expect(calls, 'called while the process runs').to.equal(0);
    c.kill('SIGKILL');
    await fired;
    await exited(c);
    await new Promise((r) => setImmediate(r));
    expect(calls).to.equal(1);
  });

  it('never calls back once cancelled, and other watches of the same process still fire', async () => {
    const c = child('sleep', ['60']);
    let cancelledCalls = 0;
    const cancel = watchProcessExit(c.pid!, () => cancelledCalls++);
    const fired = new Promise<void>((r) => watchProcessExit(c.pid!, () => r()));
    cancel!();
    c.kill('SIGKILL');
    await fired;
    await new Promise((r) => setImmediate(r));
    expect(cancelledCalls).to.equal(0);
  });

  it('takes a pid that does not exist as exited (on the next tick, not before returning)', async () => {
    let called = false;
    const fired = new Promise<void>((r) =>
      watchProcessExit(0x7ffffffe, () => {
        called = true;
        r();
      }),
    );
    expect(called).to.equal(false);
    await fired;
  });

  it('does not keep the event loop alive: a process whose only work is a watch on its parent exits by itself', async () => {
    const c = child(process.execPath, [
      '--conditions=hvlab-source', '--import', 'tsx', '-e',
      "import('@hvlab/shm').then((m) => { if (!m.watchProcessExit(process.ppid, () => process.exit(4))) process.exit(3); })",
    ]);
    expect(await exited(c)).to.equal(0);
  });

  it('works in a worker thread, and a worker that ends with watches open ends cleanly', async () => {
    const { Worker } = await import('node:worker_threads');
    const target = child('sleep', ['60']);
    const w = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const a = require(workerData.addon);
       a.watchPid(workerData.parent, () => {});
       a.watchPid(workerData.target, () => parentPort.postMessage('exited'));
       setInterval(() => {}, 1e6); // a watch keeps nothing alive
       parentPort.postMessage('watching');`,
      { eval: true, workerData: { addon: resolve(repo, 'packages', 'shm', 'build', 'Release', 'hvlab_shm.node'), parent: process.pid, target: target.pid } },
    );
    const messages: string[] = [];
    const seen = (m: string): Promise<void> => new Promise((r) => {
      if (messages.includes(m)) r();
      else w.on('message', (x: string) => x === m && r());
    });
    w.on('message', (m: string) => messages.push(m));
    await seen('watching');
    target.kill('SIGKILL');
    await seen('exited');
    // The watch on this process is still open: the worker's environment closes it as it ends.
    expect(await w.terminate()).to.equal(1);
  });
});
