/**
 * The anchor watch every host process keeps on the hypervisor (and the root on its workers): it
 * calls back once, with the pid that ended, and a cancelled watch never calls back. Its only time
 * bound is mocha's timeout; children are killed in `afterEach`.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

  it('pidAlive: a zombie is gone though it answers signal 0; a live process whose name holds ") Z " is alive', async () => {
    // `sleep 0` becomes a child of the exec'd `sleep 60`, which never reaps it.
    const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(parent);
    const zombie = Number(await new Promise<string>((r) => parent.stdout!.once('data', (d: Buffer) => r(d.toString()))));
    let state = '';
    for (let i = 0; i < 500 && state !== 'Z'; i++) {
      await new Promise((r) => setTimeout(r, 10));
      const stat = readFileSync(`/proc/${zombie}/stat`, 'latin1');
      state = stat.charAt(stat.lastIndexOf(')') + 2);
    }
    expect(state, 'the child is a zombie').to.equal('Z');
    expect(() => process.kill(zombie, 0), 'a zombie answers signal 0').to.not.throw();
    expect(pidAlive(zombie)).to.equal(false);
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-anchor-'));
    try {
      const odd = join(dir, 'a) Z (b');
      copyFileSync('/bin/sleep', odd);
      chmodSync(odd, 0o755);
      const c = spawn(odd, ['60'], { stdio: 'ignore' });
      children.push(c);
      await new Promise((r) => c.once('spawn', r));
      expect(pidAlive(c.pid!)).to.equal(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(pidAlive(parent.pid!)).to.equal(true);
  });

  it('a pid that is not a process counts as gone', async () => {
    const seen = await new Promise<number>((r) => watchPid(0x7ffffffe, r));
    expect(seen).to.equal(0x7ffffffe);
  });
});
