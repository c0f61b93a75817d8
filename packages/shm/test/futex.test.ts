/**
 * Unit tests of the shared futex of @hvlab/shm: futexWait's three outcomes, word validation, a
 * wake that crosses processes, and yieldCpu handing a CPU over. For the wake, a child
 * (test/fixtures/futex-waiter.ts, forked with `--import tsx`) maps a /dev/shm region and blocks in
 * futexWait; this process stores a new value and wakes it.
 *
 * The parent wakes only once the child is really asleep in the futex call on that word (read from
 * /proc/<pid>/syscall, which shows the syscall number, the word's address and the expected value),
 * so the child's 'ok' does not depend on timing. Regions are unlinked in `afterEach`, and a child
 * still running is killed there.
 */
import { expect } from 'chai';
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRegion, futexWait, futexWake, memoryMode, unlinkRegion, PAGE_SIZE, ShmError } from '../src/index.js';

const testDir = dirname(fileURLToPath(import.meta.url));
const pkgDir = dirname(testDir);
const WAITER = join(testDir, 'fixtures', 'futex-waiter.ts');
const runId = `${process.pid}-${randomBytes(4).toString('hex')}`;
let seq = 0;
let names: string[] = [];
let children: ChildProcess[] = [];

function regionName(): string {
  const n = `hvlab-ut-futex-${runId}-${++seq}`;
  names.push(n);
  return n;
}

/** The futex syscall number per architecture (as /proc/<pid>/syscall shows it). */
const FUTEX_NR: Partial<Record<string, number>> = { x64: 202, arm64: 98, ia32: 240, arm: 240, riscv64: 98, ppc64: 221, s390x: 238 };

/**
 * Whether the main thread of `pid` is blocked in FUTEX_WAIT on the word at `byteOffset` (within its
 * page) for `expected`. Falls back to the kernel wait channel, then to the thread state, where
 * /proc/<pid>/syscall cannot be read.
 */
function blockedInFutex(pid: number, byteOffset: number, expected: number): boolean {
  let sc: string | null = null;
  try {
    sc = readFileSync(`/proc/${pid}/syscall`, 'utf8').trim();
  } catch {
    /* not readable here */
  }
  const nr = FUTEX_NR[process.arch];
  if (sc === 'running') return false;
  if (sc !== null && nr !== undefined && /^\d+ 0x/.test(sc)) {
    const f = sc.split(' ');
    return (
      Number(f[0]) === nr &&
      (BigInt(f[1]) & BigInt(PAGE_SIZE - 1)) === BigInt(byteOffset) &&
      (BigInt(f[2]) & 0x7fn) === 0n && // FUTEX_WAIT, not private
      Number(BigInt.asIntN(32, BigInt(f[3]))) === expected
    );
  }
  try {
    const wchan = readFileSync(`/proc/${pid}/wchan`, 'utf8').trim();
    if (wchan !== '' && wchan !== '0') return wchan.includes('futex');
  } catch {
    /* not readable here */
  }
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'S';
}

interface WaiterReport {
  result?: string;
  value?: number;
  error?: string;
}

interface Waiter {
  proc: ChildProcess;
  report: Promise<WaiterReport>;
  exited: () => boolean;
  stderr: () => string;
}

/** Forks the waiter on word `index` of region `name`, expecting `expected`, with its ready flag at word `ready`. */
function startWaiter(name: string, index: number, expected: number, ready: number): Waiter {
  const proc = fork(WAITER, [name, String(index), String(expected), String(ready)], {
    cwd: pkgDir,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  children.push(proc);
  let stderr = '';
  let exited = false;
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const report = new Promise<WaiterReport>((resolve, reject) => {
    let got: WaiterReport | null = null;
    proc.on('message', (m) => (got = m as WaiterReport));
    proc.on('error', reject);
    proc.on('exit', (code, signal) => {
      exited = true;
      if (got) resolve(got);
      else reject(new Error(`waiter exited (${code ?? signal}) without a report: ${stderr}`));
    });
  });
  report.catch(() => {}); // observed by the test that awaits it
  return { proc, report, exited: () => exited, stderr: () => stderr };
}

/** Resolves once `cond()` holds (mocha's timeout is the only limit); rejects if the waiter exits first. */
async function until(w: Waiter, cond: () => boolean, what: string): Promise<void> {
  while (!cond()) {
    if (w.exited()) throw new Error(`waiter exited before ${what}: ${w.stderr()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('futexWait / futexWake', () => {
  afterEach(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    children = [];
    for (const n of names) unlinkRegion(n);
    names = [];
  });

  it('runs with the native addon (shared futexes)', () => {
    expect(memoryMode()).to.equal('shared');
  });

  it("returns 'not-equal' at once when the word does not hold the expected value", () => {
    const sab = createRegion(regionName(), PAGE_SIZE);
    const words = new Int32Array(sab);
    Atomics.store(words, 3, 42);
    expect(futexWait(sab, 3, 41, 10_000)).to.equal('not-equal');
    expect(futexWait(sab, 3, -42, -1)).to.equal('not-equal'); // would wait forever if it compared wrongly
    expect(Atomics.load(words, 3)).to.equal(42);
  });

  it('compares the full signed 32-bit word', () => {
    const sab = new SharedArrayBuffer(PAGE_SIZE);
    const words = new Int32Array(sab);
    Atomics.store(words, 0, -1);
    expect(futexWait(sab, 0, 0xffff, 10_000)).to.equal('not-equal');
    expect(futexWait(sab, 0, -1, 1)).to.equal('timed-out');
  });

  it("returns 'timed-out' when nobody wakes it within the timeout, leaving the word alone", () => {
    const sab = createRegion(regionName(), PAGE_SIZE);
    const words = new Int32Array(sab);
    Atomics.store(words, 0, 7);
    expect(futexWait(sab, 0, 7, 20)).to.equal('timed-out');
    expect(Atomics.load(words, 0)).to.equal(7);
  });

  it('futexWake with nobody waiting wakes no one', () => {
    const sab = createRegion(regionName(), PAGE_SIZE);
    expect(futexWake(sab, 0)).to.equal(0);
    expect(futexWake(sab, 1023, 1)).to.equal(0);
  });

  it('rejects a word index outside the buffer', () => {
    const sab = createRegion(regionName(), PAGE_SIZE);
    expect(() => futexWait(sab, PAGE_SIZE / 4, 0, 0)).to.throw(/outside the buffer/);
    expect(() => futexWake(sab, -1)).to.throw(/outside the buffer/);
    expect(() => futexWake(sab, 1.5)).to.throw(/outside the buffer/);
  });

  it('createRegion of an existing name fails instead of mapping the other process\'s region', () => {
    const n = regionName();
    createRegion(n, PAGE_SIZE);
    expect(() => createRegion(n, PAGE_SIZE)).to.throw(ShmError, /already exists/);
  });

  it("wakes a waiter in another process: the child reports 'ok' and the value stored before the wake", async () => {
    const name = regionName();
    const sab = createRegion(name, PAGE_SIZE);
    const words = new Int32Array(sab);
    const WORD = 5;
    const READY = 9;
    Atomics.store(words, WORD, 0x1234);
    const w = startWaiter(name, WORD, 0x1234, READY);
    await until(w, () => Atomics.load(words, READY) === 1, 'mapping the region');
    await until(w, () => blockedInFutex(w.proc.pid!, WORD * 4, 0x1234), 'blocking in futexWait');
    // A wake on another word of the same region reaches nobody.
    expect(futexWake(sab, WORD + 1)).to.equal(0);
    Atomics.store(words, WORD, 0x5678);
    expect(futexWake(sab, WORD, 1), 'waiters woken').to.equal(1);
    const r = await w.report;
    expect(r).to.deep.equal({ result: 'ok', value: 0x5678 });
  });

  it('yieldCpu hands this CPU to a thread queued on it (both pinned to one CPU)', function () {
    const taskset = spawnSync('taskset', ['-c', '0', 'true']);
    if (taskset.status !== 0) this.skip(); // no taskset (util-linux) here
    const r = spawnSync('taskset', ['-c', '0', process.execPath, '--import', 'tsx', join(testDir, 'fixtures', 'yield-handover.ts'), '40'], { cwd: pkgDir, encoding: 'utf8', timeout: 60000 });
    expect(r.status, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { withYield: number; without: number; trials: number };
    // Each yield finds the counting thread runnable on the same CPU; whether the kernel runs it
    // then depends on its share (about half the trials here), never on nothing.
    expect(out.withYield, JSON.stringify(out)).to.be.at.least(5);
    expect(out.withYield, JSON.stringify(out)).to.be.greaterThan(out.without);
  });

  it("a child that finds the word already changed gets 'not-equal' and does not block", async () => {
    const name = regionName();
    const sab = createRegion(name, PAGE_SIZE);
    const words = new Int32Array(sab);
    Atomics.store(words, 0, 99);
    const w = startWaiter(name, 0, 98, 1);
    expect(await w.report).to.deep.equal({ result: 'not-equal', value: 99 });
    expect(existsSync(`/dev/shm/${name}`)).to.equal(true);
  });
});
