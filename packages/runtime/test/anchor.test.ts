/**
 * The anchor watch every host process keeps on the hypervisor (and the root on its workers): it
 * calls back once, with the pid that ended, and a cancelled watch never calls back. Its only time
 * bound is mocha's timeout; children are killed in `afterEach`.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
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
    // The background `read` becomes a child of the exec'd `sleep 60`, which never reaps it. It
    // ends only when we close fd 3, after the shell has become `sleep` (so the shell cannot reap it).
    const parent = spawn('sh', ['-c', 'read _ <&3 & echo $!; exec sleep 60 3<&-'], { stdio: ['ignore', 'pipe', 'ignore', 'pipe'] });
    children.push(parent);
    const zombie = Number(await new Promise<string>((r) => parent.stdout!.once('data', (d: Buffer) => r(d.toString()))));
    const comm = (pid: number): string => {
      try {
        return readFileSync(`/proc/${pid}/comm`, 'latin1').trim();
      } catch {
        return '';
      }
    };
    for (let i = 0; i < 2000 && comm(parent.pid!) !== 'sleep'; i++) await new Promise((r) => setTimeout(r, 5));
    expect(comm(parent.pid!), 'the shell became sleep').to.equal('sleep');
    (parent.stdio[3] as NodeJS.WritableStream).end();
    const state = (): string => {
      const stat = readFileSync(`/proc/${zombie}/stat`, 'latin1');
      return stat.charAt(stat.lastIndexOf(')') + 2);
    };
    for (let i = 0; i < 2000 && state() !== 'Z'; i++) await new Promise((r) => setTimeout(r, 5));
    expect(state(), 'the child is a zombie').to.equal('Z');
    expect(() => process.kill(zombie, 0), 'a zombie answers signal 0').to.not.throw();
    expect(pidAlive(zombie)).to.equal(false);
    // A process named "a) Z (b" (a link's name is the process's): its state is after the last ")".
    const dir = mkdtempSync(join(tmpdir(), 'hvlab-anchor-'));
    try {
      const odd = join(dir, 'a) Z (b');
      symlinkSync(process.execPath, odd);
      const c = spawn(odd, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
      children.push(c);
      await new Promise((resolve, reject) => c.once('spawn', resolve).once('error', reject));
      for (let i = 0; i < 2000 && comm(c.pid!) !== 'a) Z (b'; i++) await new Promise((r) => setTimeout(r, 5));
      expect(comm(c.pid!)).to.equal('a) Z (b');
      expect(pidAlive(c.pid!)).to.equal(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(pidAlive(parent.pid!)).to.equal(true);
  });

  it('pidAlive opens and closes: no descriptor is left after many calls, for a live, a dead and a missing pid', () => {
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const before = fds();
    for (let i = 0; i < 2000; i++) {
      pidAlive(process.pid);
      pidAlive(1);
      pidAlive(0x7ffffffe);
    }
    // A leak leaves one descriptor per call (6000); a few may come and go meanwhile from what
    // other test files loaded into this process (a socket library's threads), so exact equality
    // failed when this file ran beside them.
    expect(fds() - before).to.be.at.most(16);
  });

  it('a pid that is not a process counts as gone', async () => {
    const seen = await new Promise<number>((r) => watchPid(0x7ffffffe, r));
    expect(seen).to.equal(0x7ffffffe);
  });
});
