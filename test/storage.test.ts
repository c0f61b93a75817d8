/**
 * A full disk or a bad file never kills the root or loses a change (issue 9), with real processes
 * and a real full disk: HVLAB_HOME is a 16 MiB tmpfs, filled to ENOSPC while a VM runs. And a
 * saved state, once handed to a resuming VM, is used up on disk: no root restart brings it back.
 *
 * Before: the root died in a synchronous log write (and every VM with it), a failed config write
 * left a 0-byte `*.tmp-*` file and the change applied in memory only; a truncated config made its
 * VM vanish (and `vm new` overwrote it); a killed partition process was reported as the worker
 * exiting unexpectedly.
 *
 * Needs root (mount). The tmpfs is mounted on the harness's own temporary home, and unmounted
 * (lazily) in `after` whatever happened.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { decode, type HostInfo, type VmInfo, type VmStateEvent } from '@hvlab/protocol';
import { zmq } from '@hvlab/runtime';
import { MgmtClient, readHost } from '@hvlab/host';
import { TestHost, eventually, sleep, untilHeard } from './harness.js';

/** Writes `file` until the disk answers ENOSPC, down to single bytes, so the disk is truly full. */
function fillDisk(file: string): number {
  const fd = openSync(file, 'w');
  let total = 0;
  try {
    for (let chunk = 1024 * 1024; chunk >= 1; chunk = Math.floor(chunk / 2)) {
      const buf = Buffer.alloc(chunk, 0x5a);
      for (;;) {
        try {
          const n = writeSync(fd, buf);
          total += n;
          if (n < chunk) break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

describe('a full HVLAB_HOME and bad VM files', function () {
  this.timeout(180000);
  const h = new TestHost();
  // The home is made when a test of this block runs (TestHost makes it at first use): one that
  // --grep leaves out runs no `after` either.
  let filler = '';
  let mounted = false;

  before(() => {
    filler = join(h.home, 'filler');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', h.home]);
    mounted = true;
  });

  after(async () => {
    if (!filler) return;
    rmSync(filler, { force: true });
    let destroyError: unknown = null;
    try {
      await h.destroy();
    } catch (e) {
      // Removing the home's contents works; removing the mount point itself is EBUSY.
      if ((e as NodeJS.ErrnoException).code !== 'EBUSY') destroyError = e;
    }
    if (mounted) execFileSync('umount', ['-l', h.home]);
    rmSync(h.home, { recursive: true, force: true });
    const left = h.leftovers();
    expect(left.pids, 'processes left behind').to.deep.equal([]);
    expect(left.shm, '/dev/shm files left behind').to.deep.equal([]);
    if (destroyError) throw destroyError;
  });

  const vm = async (name: string): Promise<VmInfo> => (await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === name)!;
  const progressing = async (name: string): Promise<boolean> => {
    const p0 = (await vm(name)).workload.progress ?? 0;
    return await eventually(async () => ((await vm(name)).workload.progress ?? 0) > p0, 10000);
  };

  it('a truncated config is listed as Invalid with its reason, and vm new does not overwrite it', async () => {
    const vmDir = h.paths.vmDir;
    execFileSync('mkdir', ['-p', vmDir]);
    writeFileSync(join(vmDir, 'bad.json'), '{"version":1,"id":"3f2b8c1e-8d4a-4f7e-9b1a-2c3d4');
    execFileSync('mkdir', ['-p', join(vmDir, 'adir.json')]);
    await h.ok('up', '--lps', '1');
    // A directory in a config's place is listed Invalid, and delete leaves it, saying why (it was an EISDIR).
    expect((await vm('adir')).state).to.equal('Invalid');
    const del = await h.run('vm', 'delete', 'adir');
    expect(del.code).to.equal(1);
    expect(del.stderr).to.match(/adir\.json is a directory, not a configuration hvlab wrote: it is left as it is/);
    expect(existsSync(join(vmDir, 'adir.json'))).to.equal(true);
    rmSync(join(vmDir, 'adir.json'), { recursive: true });
    const bad = await vm('bad');
    expect(bad.state).to.equal('Invalid');
    expect(bad.lastStateReason).to.match(/bad\.json is invalid: it is not JSON/);
    const again = await h.run('vm', 'new', 'bad');
    expect(again.code).to.not.equal(0);
    expect(again.stderr).to.match(/a VM config for "bad" exists but is invalid: .*; fix or delete .*bad\.json/);
    const start = await h.run('vm', 'start', 'bad');
    expect(start.code).to.not.equal(0);
    expect(start.stderr).to.match(/bad\.json is invalid/);
    expect(readFileSync(join(vmDir, 'bad.json'), 'utf8')).to.equal('{"version":1,"id":"3f2b8c1e-8d4a-4f7e-9b1a-2c3d4');
    await h.ok('vm', 'delete', 'bad');
    expect(existsSync(join(vmDir, 'bad.json'))).to.equal(false);
  });

  it('on a full disk a config change fails with StorageFailed, changes nothing, and the root and the VM keep running', async () => {
    await h.ok('vm', 'new', 's1', '--memory', '8M', '--workload', 'counter');
    await h.ok('vm', 'start', 's1');
    const before = await h.json<HostInfo>('host', 'info');
    const cfgFile = join(h.paths.vmDir, 's1.json');
    const cfgBefore = readFileSync(cfgFile, 'utf8');
    expect(await progressing('s1')).to.equal(true);

    expect(fillDisk(filler)).to.be.greaterThan(0);
    const r = await h.run('vm', 'set-processor', 's1', '--weight', '200');
    expect(r.code, r.stdout).to.not.equal(0);
    expect(r.stderr.trim()).to.include(`could not write the configuration of VM "s1" to ${cfgFile}: ENOSPC (no space left on device)`);
    const ic = await h.run('vm', 'ic', 's1', '--disable', 'kvp');
    expect(ic.code).to.not.equal(0);
    expect(ic.stderr).to.match(/ENOSPC \(no space left on device\)/);
    // Enough failed changes (each logs a warning) to outgrow the log file's last, partly used
    // page: tmpfs takes appends into it without asking for space.
    const client = new MgmtClient(h.paths.mgmtEndpoint, { watch: readHost(h.paths) });
    try {
      for (let i = 0; i < 40; i++) {
        const e = await client.request('vmSetProcessor', { name: 's1', weight: 300 + i }).then(() => null, (x: Error) => x);
        expect(e?.message).to.match(/ENOSPC/);
      }
    } finally {
      client.close();
    }

    expect(readFileSync(cfgFile, 'utf8'), 'the config on disk is unchanged').to.equal(cfgBefore);
    expect(readdirSync(h.paths.vmDir).filter((f) => f.includes('.tmp-')), 'no temp file is left').to.deep.equal([]);
    const s1 = await vm('s1');
    expect(s1.state).to.equal('Running');
    expect(s1.processor.weight, 'nor is it changed in memory').to.equal(100);
    const kvp = (await h.json<Array<{ service: string; enabled: boolean }>>('vm', 'ic', 's1')).find((s) => s.service === 'kvp')!;
    expect(kvp.enabled).to.equal(true);
    expect(await progressing('s1'), 'the VM keeps progressing on a full disk').to.equal(true);
    const during = await h.json<HostInfo>('host', 'info');
    expect(during.pids.root, 'the same root').to.equal(before.pids.root);
    expect(during.rootRestarts).to.equal(before.rootRestarts);

    // Room again: the next change succeeds, and the root's log says what it could not write.
    rmSync(filler);
    const ok = await h.json<VmInfo>('vm', 'set-processor', 's1', '--weight', '200');
    expect(ok.processor.weight).to.equal(200);
    expect(JSON.parse(readFileSync(cfgFile, 'utf8')).processor.weight).to.equal(200);
    const rootLog = join(h.paths.logDir, 'root.log');
    const lines = readFileSync(rootLog, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const drop = lines.find((l) => typeof l.dropped === 'number');
    expect(drop, 'a line says how many lines were dropped').to.not.equal(undefined);
    expect(drop!.dropped).to.be.greaterThan(0);
    expect(drop!.msg).to.match(/^dropped \d+ log lines?: writing .*root\.log failed with ENOSPC \(no space left on device\)$/);
    expect(drop).to.include({ role: 'root', host: before.hostId });
    expect((await h.json<HostInfo>('host', 'info')).pids.root).to.equal(before.pids.root);
    expect((await vm('s1')).state).to.equal('Running');
  });

  it('a save of a Paused VM that fails on a full disk leaves it paused: it stands still until resumed', async () => {
    if ((await h.run('host', 'info')).code !== 0) await h.ok('up', '--lps', '1'); // run alone (--grep)
    await h.ok('vm', 'new', 'p1', '--memory', '8M', '--workload', 'counter:1000');
    await h.ok('vm', 'start', 'p1');
    expect(await progressing('p1')).to.equal(true);
    await h.ok('vm', 'pause', 'p1');
    const p0 = (await vm('p1')).workload.progress ?? 0;
    expect(fillDisk(filler)).to.be.greaterThan(0);
    try {
      const r = await h.run('vm', 'save', 'p1');
      expect(r.code, r.stdout).to.not.equal(0);
      expect(r.stderr).to.match(/could not be saved: .*ENOSPC/);
      // The failed save's thaw let it run before, while the root said Paused. A counter at 1000
      // a second that ran in this second would have moved.
      await sleep(1000);
      const after = await vm('p1');
      expect(after.state).to.equal('Paused');
      expect(after.workload.progress ?? 0, 'the counter stood still').to.equal(p0);
    } finally {
      rmSync(filler);
    }
    await h.ok('vm', 'resume', 'p1');
    expect(await progressing('p1'), 'resumed, it counts on').to.equal(true);
    await h.ok('vm', 'turn-off', 'p1');
  });

  it('a killed partition process is reported as such', async () => {
    const s1 = await vm('s1');
    process.kill(s1.pids.partition!, 'SIGKILL');
    let after: VmInfo = s1;
    expect(await eventually(async () => (after = await vm('s1')).state === 'Off', 10000)).to.equal(true);
    expect(after.lastStateReason).to.equal('the partition process was killed (SIGKILL)');
  });

  it('a partition process that closes its link to its worker and stays is killed, and the VM says why', async () => {
    await h.ok('vm', 'start', 's1');
    const s1 = await vm('s1');
    const pid = s1.pids.partition!;
    // Stopped, the process cannot end by itself once its link closes, as a running guest's does:
    // it stands for one that closed the link and went on (a hung or hostile partition process).
    process.kill(pid, 'SIGSTOP');
    try {
      shutDownLinkOf(pid);
      let after: VmInfo = s1;
      expect(await eventually(async () => (after = await vm('s1')).state === 'Off', 15000), `still ${after.state}`).to.equal(true);
      expect(after.lastStateReason).to.equal('the partition process closed its link to the worker');
    } finally {
      try {
        process.kill(pid, 'SIGCONT');
      } catch { /* killed, as it should be */ }
    }
  });
});

/**
 * Shuts down the socket a partition process holds as its link to its worker (its fd 3), through a
 * copy of that descriptor taken with pidfd_getfd: its worker reads the end of the link while the
 * process itself goes on. Python's ctypes makes the two system calls Node has no API for.
 */
function shutDownLinkOf(pid: number): void {
  const script = [
    'import ctypes, os, socket, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'pfd = os.pidfd_open(int(sys.argv[1]))',
    'fd = libc.syscall(438, pfd, 3, 0)',  // pidfd_getfd
    'if fd < 0: raise OSError(ctypes.get_errno(), "pidfd_getfd")',
    's = socket.socket(fileno=fd)',
    's.shutdown(socket.SHUT_RDWR)',
  ].join('\n');
  execFileSync('python3', ['-c', script, String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
}

describe('a root that dies while a VM resumes from its saved state', function () {
  this.timeout(180000);
  const h = new TestHost();
  after(() => h.destroyLeavingNothing());

  it('cannot bring that saved state back: with the worker gone too, the VM is Off after the restart and after down and up', async () => {
    await h.ok('up', '--lps', '1');
    await h.ok('vm', 'new', 'r', '--memory', '8M');
    await h.ok('vm', 'start', 'r');
    const rootPid = (await h.json<HostInfo>('host', 'info')).pids.root;

    // kill -9 the root the moment it says Starting: it has handed the saved state to a worker
    // (or is about to); then the worker dies too while no root watches it.
    const sub = new zmq.Subscriber({ linger: 0 });
    sub.connect(h.paths.eventsEndpoint);
    sub.subscribe('vm');
    let heard = false;
    const watcher = (async () => {
      for await (const [, body] of sub) {
        const ev = decode<VmStateEvent>(body);
        heard = true;
        if (ev.vm === 'r' && ev.state === 'Starting') {
          process.kill(rootPid, 'SIGKILL');
          return true;
        }
      }
      return false;
    })();
    try {
      // The subscription is in effect once an event arrives: r, still running, is paused and
      // resumed as a probe until one does; then it is saved.
      const probe = async (): Promise<void> => {
        await h.ok('vm', 'pause', 'r');
        await h.ok('vm', 'resume', 'r');
      };
      expect(await untilHeard(() => heard, probe), 'the subscriber hears the events socket').to.equal(true);
      await h.ok('vm', 'save', 'r');
      const start = await h.run('vm', 'start', 'r');
      expect(await Promise.race([watcher, sleep(15000).then(() => false)]), 'the root was killed while Starting').to.equal(true);
      expect(start.code, 'the start did not complete').to.not.equal(0);
    } finally {
      sub.close();
    }
    const recFile = join(h.paths.vmwpDir, 'r.json');
    if (await eventually(() => existsSync(recFile), 3000)) {
      const rec = JSON.parse(readFileSync(recFile, 'utf8')) as { pid: number; partitionPid: number | null };
      for (const pid of [rec.pid, rec.partitionPid]) {
        if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      }
    }

    // The supervisor's new root: the VM is Off, its saved state gone, and it stays so.
    let r: VmInfo | undefined;
    expect(await eventually(async () => {
      const l = await h.run('vm', 'list', '--json');
      if (l.code !== 0) return false;
      r = (JSON.parse(l.stdout) as VmInfo[]).find((v) => v.name === 'r');
      return r?.state === 'Off';
    }, 30000), `the VM is Off after the root restart (it is ${r?.state})`).to.equal(true);
    expect(existsSync(join(h.paths.vmDir, 'r.saved')), 'the saved state is gone').to.equal(false);
    await h.ok('down');
    await h.ok('up', '--lps', '1');
    expect((await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'r')!.state, 'no silent rollback').to.equal('Off');
    await h.ok('vm', 'start', 'r');
    expect((await h.json<VmInfo[]>('vm', 'list')).find((v) => v.name === 'r')!.lastStateReason).to.equal('started');
  });
});
