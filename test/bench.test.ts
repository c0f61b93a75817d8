/**
 * Every benchmark in scripts/bench runs in CI through its quick mode (`pnpm bench NAME --quick`:
 * the same code path with few iterations), so a benchmark cannot break silently. Each runs as a
 * child process (node with the tsx loader, as the harness runs the CLI) with a TMPDIR of its own
 * and a marker in its environment that every process it starts inherits. The test asserts exit
 * code 0, that the result and ratio lines are there with finite numbers (never how large they
 * are: timing belongs to the benchmark's own report), and that nothing is left behind: no
 * process carrying the marker, no /dev/shm file of a host the run used, nothing in its TMPDIR.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { eventually, shmFiles } from './harness.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const runTs = join(repo, 'scripts', 'bench', 'run.ts');
/** A quick run that takes longer than this is stuck; it is killed and the test fails. */
const RUN_LIMIT_MS = 150_000;
const QUICK_NOTE = 'quick mode: few iterations';
const MARKER = 'HVLAB_BENCH_TEST_RUN';
/** tsx keeps its compile cache in the temp directory; a run's TMPDIR links to the shared one. */
const TSX_CACHE = /^tsx-\d+$/;

interface BenchRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Pids of the processes whose environment carries `MARKER=id`. */
function markedProcesses(id: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const env = `\0${readFileSync(`/proc/${d}/environ`, 'latin1')}`;
      if (env.includes(`\0${MARKER}=${id}\0`)) out.push(Number(d));
    } catch { /* gone, or not ours to read */ }
  }
  return out;
}

/** Host ids a run mentions: in its progress lines and in its "nothing left behind (hosts …)" line. */
function hostIdsIn(stderr: string): string[] {
  const ids = new Set<string>();
  for (const m of stderr.matchAll(/\bhost ([0-9a-f]{6,})\b/g)) ids.add(m[1]!);
  const clean = /nothing left behind \(hosts ([^:]*):/.exec(stderr);
  for (const id of clean?.[1]?.split(', ') ?? []) if (/^[0-9a-f]+$/.test(id)) ids.add(id);
  return [...ids];
}

/** One quick benchmark run, with everything it needs to be checked and cleaned up. */
class QuickRun {
  readonly id = randomBytes(6).toString('hex');
  readonly tmp = mkdtempSync(join(tmpdir(), 'hvlab-benchtest-'));
  private child: ChildProcess | null = null;
  result: BenchRun | null = null;

  constructor() {
    // The loader's cache is not the run's: share it (a fresh one would compile everything anew).
    const cache = readdirSync(tmpdir()).find((f) => TSX_CACHE.test(f));
    if (cache && existsSync(join(tmpdir(), cache))) symlinkSync(join(tmpdir(), cache), join(this.tmp, cache));
  }

  run(name: string): Promise<BenchRun> {
    return new Promise((res, rej) => {
      const c = spawn(process.execPath, ['--import', 'tsx', runTs, name, '--quick'], {
        cwd: repo,
        env: { ...process.env, TMPDIR: this.tmp, [MARKER]: this.id },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.child = c;
      let stdout = '';
      let stderr = '';
      c.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
      c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const t = setTimeout(() => c.kill('SIGTERM'), RUN_LIMIT_MS);
      c.once('error', (e) => {
        clearTimeout(t);
        rej(e);
      });
      c.once('close', (code, signal) => {
        clearTimeout(t);
        this.result = { code, signal, stdout, stderr };
        res(this.result);
      });
    });
  }

  /** Whatever the run left: marked processes, /dev/shm files of its hosts, entries in its TMPDIR. */
  leftovers(): { pids: number[]; shm: string[]; tmp: string[] } {
    const ids = hostIdsIn(this.result?.stderr ?? '');
    let tmp: string[] = [];
    try {
      tmp = readdirSync(this.tmp).filter((f) => !TSX_CACHE.test(f));
    } catch { /* removed */ }
    return { pids: markedProcesses(this.id), shm: ids.flatMap(shmFiles), tmp };
  }

  /** Kills and removes everything of the run, whether it passed or not. */
  async destroy(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    const kill = (): void => {
      for (const p of markedProcesses(this.id)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch { /* gone */ }
      }
    };
    kill();
    await eventually(() => {
      kill();
      return markedProcesses(this.id).length === 0;
    }, 5000);
    // Every process is gone, so nothing maps these any more; the run's sockets are in its TMPDIR.
    for (const id of hostIdsIn(this.result?.stderr ?? '')) for (const f of shmFiles(id)) rmSync(join('/dev/shm', f), { force: true });
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

/**
 * The first `count` numbers after `label` on the output line that starts with it (a string, or a
 * RegExp anchored at the line's start), whitespace runs collapsed; each must be finite.
 */
function numbersAfter(out: string, label: string | RegExp, count: number): number[] {
  const norm = (s: string): string => s.replace(/\s+/g, ' ').trim();
  const lines = out.split('\n').map(norm);
  let line: string | undefined;
  let rest = '';
  for (const l of lines) {
    const at = typeof label === 'string' ? (l.startsWith(norm(label)) ? norm(label).length : -1) : (label.exec(l)?.[0].length ?? -1);
    if (at >= 0) {
      line = l;
      rest = l.slice(at);
      break;
    }
  }
  if (line === undefined) throw new Error(`no line starting with ${String(label)} in:\n${out}`);
  const values = rest.trim().split(' ').slice(0, count).map((t) => Number(t.replace(/,$/, '')));
  expect(values, `the numbers after ${String(label)} in "${line}"`).to.have.length(count);
  for (const v of values) expect(Number.isFinite(v), `"${line}" has a number that is not finite`).to.equal(true);
  return values;
}

/** The ratio on the line starting with `label`: finite and above 0. */
function ratio(out: string, label: string): number {
  const [v] = numbersAfter(out, label, 1);
  expect(v, `${label} ${v}`).to.be.greaterThan(0);
  return v!;
}

/** What each benchmark's quick run must print (its result rows and its ratios). */
const expectations: Record<string, (out: string) => void> = {
  hypercall: (out) => {
    // n, p50, p99, mean, calls/s
    for (const row of ['hypercall SignalEvent (page)', 'the same, event to our own page', 'futex ping-pong (2 processes)', 'hypercall GetPartitionId (socket)']) {
      const [n] = numbersAfter(out, row, 5);
      expect(n, row).to.be.greaterThan(0);
    }
    numbersAfter(out, /^zmq echo \(msgpack, \d+ B\)/, 5);
    ratio(out, 'ratio page hypercall / futex (p50)');
    ratio(out, 'ratio page hypercall / zmq echo (p50)');
    ratio(out, 'ratio socket hypercall / zmq echo');
    // The thread served the page calls (all but the first of each connection).
    const [fast] = numbersAfter(out, 'page calls:', 1);
    expect(fast).to.be.greaterThan(0);
    numbersAfter(out, 'vm new+start b1 (16M, idle) to Running', 3);
    numbersAfter(out, 'spawn `node -e 0` to exit', 3);
    ratio(out, 'ratio vm start / node spawn (p50)');
  },
  vmbus: (out) => {
    const shared = out.includes('memory mode shared');
    for (const size of ['64 B', '1 KiB', '16 KiB']) {
      // packets/s, MB/s, vs memcpy
      if (shared) numbersAfter(out, `${size} shm ring (both sides polling, 4 per commit)`, 3);
      numbersAfter(out, `${size} zmq RemoteHub/Link (256 KiB credit)`, 3);
      numbersAfter(out, `${size} memcpy (Uint8Array.set into ArrayBuffer)`, 3);
      numbersAfter(out, `${size} same into a SharedArrayBuffer`, 3);
      // The addon's copy (loaded whenever memory is shared), as the ring writes large payloads.
      if (shared) numbersAfter(out, `${size} same with copyBytes (native memmove)`, 3);
    }
    // The 16 KiB run again with a commit per packet, beside the burst writer's.
    if (shared) numbersAfter(out, '16 KiB   same, a commit per packet', 3);
    numbersAfter(out, 'zmq RemoteHub/Link', 3);
    if (shared) {
      numbersAfter(out, 'shm ring, polling', 3);
      numbersAfter(out, 'shm ring, SignalEvent through the hypervisor', 3);
      // The signalled ping-pong went through the hypervisor both ways (the path this test guards).
      const calls = /\(SignalEvent calls per round trip: (\S+) to the child, (\S+) back\)/.exec(out);
      expect(calls, 'the SignalEvent calls line').to.not.equal(null);
      const [toChild, back] = [Number(calls![1]), Number(calls![2])];
      expect(toChild, 'SignalEvent calls per round trip to the child').to.be.greaterThan(0);
      expect(back, 'SignalEvent calls per round trip back').to.be.greaterThan(0);
      ratio(out, 'ratio zmq / shm polling (p50):');
      ratio(out, 'ratio shm signalled / zmq (p50):');
      // The same round trip with the hypervisor's bell poll kept at its base, for the ratio beside it.
      numbersAfter(out, 'same, bell poll at its 25 µs base', 3);
      ratio(out, 'ratio adaptive bell poll / base poll (p50):');
      // The two ways the hypervisor wakes a session's event loop, measured in turn.
      numbersAfter(out, 'wake of an event loop, word watch (2 wake-ups)', 3);
      numbersAfter(out, 'same, wake descriptor (1 wake-up)', 3);
      ratio(out, 'ratio wake descriptor / word watch (p50, interleaved):');
      ratio(out, 'shmVsZmq64 =');
      ratio(out, 'shmVsMemcpy16k =');
      ratio(out, 'shmPerPacketVsMemcpy16k =');
      ratio(out, 'nativeVsV8Shared16k =');
      // The signalled round trip's aim, from the two round trips of the same run.
      ratio(out, 'signalled64 =');
      expect(out).to.match(/zmqVsSignalled = \d+(\.\d+)? .*aim <= 50 µs and >= 3: (MET|NOT met) in this run/);
    }
  },
  sched: (out) => {
    // n, lost, p50, p99, max
    for (const row of ['to a halted VP (sleep:1000), page', 'to a running VP (spin), page', 'to a halted VP, socket', 'floor: futex wake of an idle thread']) {
      const [n] = numbersAfter(out, row, 5);
      expect(n, row).to.be.greaterThan(0);
    }
    ratio(out, 'ratio halted / running (p50)');
    ratio(out, 'ratio halted / idle-wake floor (p50)');
    // The comparison host, whose scheduler thread keeps its CPU after a wake-up, was measured too.
    const [noYield] = numbersAfter(out, 'same, scheduler keeps its CPU after a wake', 5);
    expect(noYield, 'probes on the host without the yield').to.be.greaterThan(0);
    ratio(out, 'ratio halted, yield / no yield (p50)');
    expect(out).to.match(/^haltedVp = \d+(\.\d+)? µs p50 .*aim <= 50 µs: (MET|NOT met) in this run$/m);
    expect(out).to.match(/^ticksPerS = \d+(\.\d+)? .*aim >= 995: (MET|NOT met) in this run$/m);
    // ticks, ticks/s, p50, p99, max
    numbersAfter(out, /^\|actual - ideal\|, \d+ samples/, 5);
    ratio(out, 'ratio ticks/s / nominal');
    numbersAfter(out, 'spin VM (VmInfo progress)', 1);
    ratio(out, 'ratio VM / thread');
  },
  host: (out) => {
    // processes, % of one CPU, schedstat ms, schedstat %, runs/s
    const [procs] = numbersAfter(out, 'host processes (all)', 5);
    expect(procs, 'host processes measured').to.be.greaterThan(0);
    for (const role of ['hypervisor', 'root', 'vmwp', 'partition']) numbersAfter(out, role, 5);
    // The second window, with heartbeat and time sync turned off on every VM, was measured.
    const [offProcs] = numbersAfter(out, 'same host, heartbeat and time sync off', 5);
    expect(offProcs, 'host processes measured with the periodic services off').to.equal(procs);
    numbersAfter(out, 'baseline: `node -e` with a 1 s timer', 5);
    ratio(out, 'ratio host / baseline (schedstat)');
    ratio(out, 'ratio CPU per thread run, host / baseline');
    // n, mean, min, max MiB
    const [vms] = numbersAfter(out, 'VM (VMWP + partition)', 4);
    expect(vms, 'VMs whose PSS was measured').to.be.greaterThan(0);
    numbersAfter(out, 'baseline: bare `node -e` process', 4);
    ratio(out, 'ratio VM / two bare node processes');
    // target, Running: every VM of the quick run started
    const [target, running] = numbersAfter(out, 'idle VMs started one after another', 2);
    expect(running, 'VMs Running in the many-VMs part').to.equal(target);
  },
  cluster: (out) => {
    const [seconds, vms] = numbersAfter(out, 'time to all Running (s, VMs)', 2);
    expect(seconds, 'seconds to all Running').to.be.greaterThan(0);
    expect(vms, 'VMs Running').to.equal(6);
    for (const way of ['through link', 'direct']) {
      const [p50, p99] = numbersAfter(out, `round trip p50, p99 ms ${way}`, 2);
      expect(p50, `round trip ${way}`).to.be.greaterThan(0);
      expect(p99).to.be.at.least(p50!);
      const [mbps] = numbersAfter(out, `bulk Mbit/s ${way}`, 1);
      expect(mbps, `bulk ${way}`).to.be.greaterThan(0);
    }
    ratio(out, 'ratio link / direct round trip (p50)');
    ratio(out, 'ratio link / direct throughput');
    const [warmLink, warmDirect] = numbersAfter(out, 'warm-ups, Mbit/s, link then direct', 2);
    expect(warmLink, 'the warm-up through the link').to.be.greaterThan(0);
    expect(warmDirect, 'the direct warm-up').to.be.greaterThan(0);
  },
  migrate: (out) => {
    const [mbs] = numbersAfter(out, 'link bandwidth MB/s (baseline)', 1);
    expect(mbs, 'link bandwidth').to.be.greaterThan(0);
    const downs = out.split('\n').filter((l) => l.trim().startsWith('downtime p50, p99, max ms'));
    expect(downs, 'two downtime rows').to.have.length(2);
    for (const l of downs) {
      const [p50, p99] = l.trim().slice('downtime p50, p99, max ms'.length).trim().split(/\s+/).map(Number);
      expect(p50, l).to.be.greaterThan(0);
      expect(p99!, l).to.be.at.least(p50!);
    }
    const parts = out.split('\n').filter((l) => l.trim().startsWith('blackout parts p50 ms'));
    expect(parts, 'two rows of blackout parts').to.have.length(2);
    const n = '-?\\d+(\\.\\d+)?';
    // The hosts share a clock: the answer's way back is measured apart from the downtime.
    for (const l of parts) expect(l, 'every part measured').to.match(new RegExp(`freeze ${n}, pages ${n}, start ${n} \\(destination ${n}, transit ${n}\\); answer back ${n}`));
    const acked = out.split('\n').filter((l) => l.trim().startsWith('until the source heard, p50, p99 ms'));
    expect(acked, 'two rows of the downtime until the source heard').to.have.length(2);
    for (const [i, l] of acked.entries()) {
      const [p50] = l.trim().slice('until the source heard, p50, p99 ms'.length).trim().split(/\s+/).map(Number);
      const [down] = downs[i]!.trim().slice('downtime p50, p99, max ms'.length).trim().split(/\s+/).map(Number);
      expect(p50, l).to.be.at.least(down!);
    }
    expect(out).to.match(/^idle VM \(\d+ MiB, 2 moves, 0 failed\)/m);
    expect(out).to.match(/^memdirty VM \(\d+ MiB, 2 moves, 0 failed\)/m);
    ratio(out, 'ratio total / model');
    ratio(out, 'ratio bytes sent / RAM');
  },
  faults: (out) => {
    // KVP get round trips: n, p50, p99, mean under each condition
    for (const row of ['no fault on the VM (baseline)', 'a vmbus fault on another channel (heartbeat)', 'a never-firing vmbus fault on kvp itself']) {
      const [n] = numbersAfter(out, row, 4);
      expect(n, row).to.be.greaterThan(0);
    }
    numbersAfter(out, /^kvp with a delay fault of \d+ ms/, 4);
    ratio(out, 'ratio other channel / none (p50)');
    ratio(out, 'ratio never-firing on kvp / none (p50)');
    ratio(out, 'ratio (delayed - none) / delay (p50)');
    // Pauses: n, p50, max; every pause was seen stopped and seen running again.
    for (const row of ['request sent to process seen stopped', 'inject round trip', 'seen stopped', 'seen running again after the due end', 'recorded endedAt - startedAt']) numbersAfter(out, row, 3);
    for (const row of ['ratio seen stopped / requested (p50, max)', 'ratio recorded / requested (p50, max)']) {
      numbersAfter(out, row, 2);
      ratio(out, row);
    }
    // A killed --wait CLI's fault ended because its owner was gone (not because it expired).
    const [kills] = numbersAfter(out, 'kill -9 of a --wait CLI to its fault ended, ms', 3);
    expect(kills, 'CLIs killed').to.be.greaterThan(0);
    expect(out).to.match(/^kill -9 of a --wait CLI to its fault ended, ms .*\(owner-gone\)$/m);
    numbersAfter(out, /^ratio to the lease of \d+ ms \(p50, max\)/, 2);
    for (const row of ['list (baseline)', 'inject pause (nemesis signals it)', 'inject vmbus (through the root and the VMWP)', 'readWorld in this process (one per inject)']) numbersAfter(out, row, 4);
    ratio(out, 'ratio inject pause / list (p50)');
    ratio(out, 'ratio inject vmbus / list (p50)');
  },
};

describe('benchmarks (quick mode)', function () {
  this.timeout(RUN_LIMIT_MS + 30_000);

  it('every benchmark that `pnpm bench` knows has a quick-mode test here', async function () {
    const r = await new Promise<BenchRun>((res, rej) => {
      const c = spawn(process.execPath, ['--import', 'tsx', runTs], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      c.once('error', rej);
      c.once('close', (code, signal) => res({ code, signal, stdout, stderr }));
    });
    expect(r.code).to.equal(2);
    const listed = /available benchmarks: (.*)/.exec(r.stderr)?.[1]?.split(', ') ?? [];
    expect(listed.sort()).to.deep.equal(Object.keys(expectations).sort());
  });

  for (const [name, check] of Object.entries(expectations)) {
    it(`\`pnpm bench ${name} --quick\` exits 0, prints its results and ratios as finite numbers, and leaves nothing behind`, async function () {
      const q = new QuickRun();
      try {
        const r = await q.run(name);
        const why = `bench ${name} --quick: exit ${r.signal ?? r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr.slice(-6000)}`;
        expect(r.code, why).to.equal(0);
        expect(r.stdout, why).to.include(QUICK_NOTE);
        // Every bench says how disturbed its run was (other hvlab hosts, load).
        expect(r.stdout, why).to.match(/^(no other hvlab host ran meanwhile \(1-min load up to [\d.]+\)|DISTURBED: )/m);
        // And what the VM processes ran: a number from compiled modules (stale bundles) is not comparable.
        expect(r.stdout, why).to.match(/^(VM processes ran bundles \(dist\/bundle, with their code caches\)|WARNING: VM processes ran (compiled modules|their TypeScript sources))/m);
        check(r.stdout);
        expect(r.stderr, why).to.match(new RegExp(`\\[bench ${name}\\] nothing left behind \\(hosts [0-9a-f]`));
        // The bench says it left nothing; check for ourselves (dying processes get a moment).
        await eventually(() => q.leftovers().pids.length === 0, 5000);
        const left = q.leftovers();
        expect(left.pids, 'processes of the run left behind').to.deep.equal([]);
        expect(left.shm, '/dev/shm files of the run left behind').to.deep.equal([]);
        expect(left.tmp, `entries left in the run's TMPDIR ${q.tmp}`).to.deep.equal([]);
      } finally {
        await q.destroy();
      }
    });
  }
});
