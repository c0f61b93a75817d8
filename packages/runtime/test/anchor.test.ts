/**
 * The anchor watch every host process keeps on the hypervisor (and the root on its workers): it
 * calls back once, with the pid that ended, and a cancelled watch never calls back. Its only time
 * bound is mocha's timeout; children are killed in `afterEach`.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { pidAlive, watchPid, watchPids } from '../src/anchor.js';

let children: ChildProcess[] = [];

function sleeper(): ChildProcess {
  const c = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(c);
  return c;
}

const exited = (c: ChildProcess): Promise<void> =>
  new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

describe('the anchor watch (watchPid, watchPids)', () => {
  afterEach(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all(children.map(exited));
    children = [];
  });

  it('watchPids calls back once, naming the first of its processes to be killed', async () => {
    const [a, b] = [sleeper(), sleeper()];
    const gone: number[] = [];
    const first = new Promise<void>((r) => watchPids([a.pid!, b.pid!], (pid) => {
      gone.push(pid);
      r();
    }));
    b.kill('SIGKILL');
    await first;
    expect(gone).to.deep.equal([b.pid]);
    expect(pidAlive(b.pid!)).to.equal(false);
    a.kill('SIGKILL');
    await exited(a);
    await new Promise((r) => setImmediate(r));
    expect(gone, 'no second call once one process was gone').to.deep.equal([b.pid]);
  });

  it('a cancelled watch never calls back', async () => {
    const c = sleeper();
    let calls = 0;
    const cancel = watchPid(c.pid!, () => calls++);
    const other = new Promise<void>((r) => watchPid(c.pid!, () => r()));
    cancel();
    c.kill('SIGKILL');
    await other;
    await new Promise((r) => setImmediate(r));
    expect(calls).to.equal(0);
  });

  it('a pid that is not a process counts as gone', async () => {
    const seen = await new Promise<number>((r) => watchPid(0x7ffffffe, r));
    expect(seen).to.equal(0x7ffffffe);
  });
});
