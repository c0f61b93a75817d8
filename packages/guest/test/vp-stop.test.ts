/**
 * A halted VP thread waits on its dispatch word with no timeout: the scheduler wakes it when it
 * dispatches it, and whoever stops it wakes it until it has left its loop (`stopVpThreads`). These
 * tests check, without any clock, that the wait has no timeout (the kernel's view of the blocked
 * syscall in /proc), that stopVpThreads gets the thread out of it, and that a process whose VP
 * waits can still exit (process.exit joins worker threads, so one asleep in a futex would hold it).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Dispatch, GoWord, PROBE_VECTOR_MIN, SchedRegion, VirtualApicView, VpPage, VpRegionHeader, vpPageOffset } from '@hvlab/protocol';
import { futexWake } from '@hvlab/shm';
import { CTL_HELD, CTL_LIVE, stopVpThreads } from '../src/vp.js';
import { startLoneVp, type LoneVp } from './fixtures/vp-start.js';

const fixture = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'vp-start.ts');
/** The futex syscall number per architecture (as /proc/<pid>/task/<tid>/syscall shows it). */
const FUTEX_NR: Partial<Record<string, number>> = { x64: 202, arm64: 98 };

/**
 * The threads of this process blocked in FUTEX_WAIT (shared) for `expected`, with the timeout each
 * gave (0: none). Empty where /proc/<pid>/task/<tid>/syscall cannot be read.
 */
function futexWaiters(expected: number): Array<{ tid: number; timeout: bigint }> {
  const nr = FUTEX_NR[process.arch];
  const out: Array<{ tid: number; timeout: bigint }> = [];
  for (const t of readdirSync('/proc/self/task')) {
    let sc = '';
    try {
      sc = readFileSync(`/proc/self/task/${t}/syscall`, 'utf8').trim();
    } catch {
      continue;
    }
    const f = sc.split(' ');
    if (Number(f[0]) !== nr || f.length < 5) continue;
    // FUTEX_WAIT (0) without FUTEX_PRIVATE_FLAG (128): the addon's shared futex, not one of
    // Node's or glibc's private ones, which may wait for the same value.
    if ((BigInt(f[2]!) & 0xffn) !== 0n || Number(BigInt.asIntN(32, BigInt(f[3]!))) !== expected) continue;
    out.push({ tid: Number(t), timeout: BigInt(f[4]!) });
  }
  return out;
}

describe('a halted VP waits with no timeout, and is stopped by waking it', function () {
  this.timeout(30000);

  it('sleeps in FUTEX_WAIT on its dispatch word with no timeout, and stopVpThreads gets it out of the loop', async function () {
    if (FUTEX_NR[process.arch] === undefined) this.skip();
    const vp = await startLoneVp();
    try {
      // The VP asked for an LP (Dispatch.Start) that nobody grants: it waits on that value.
      let waiters = futexWaiters(Dispatch.Start);
      while (waiters.length === 0) {
        await new Promise((r) => setTimeout(r, 5));
        waiters = futexWaiters(Dispatch.Start);
      }
      expect(waiters.map((w) => w.timeout), 'the timeout argument of the wait').to.deep.equal([0n]);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(1);
      expect(stopVpThreads(vp.start.control, vp.wake)).to.equal(true);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(0);
      await vp.stopped;
    } finally {
      stopVpThreads(vp.start.control, vp.wake);
      await vp.worker.terminate();
    }
  });

  /** Resolves once `f` holds (a look every 5 ms). */
  const until = async (f: () => boolean): Promise<void> => {
    while (!f()) await new Promise((r) => setTimeout(r, 5));
  };
  /** A go region's word 0 set to `v`, and its waiters woken (as the VMWP's go does). */
  const setGate = (gate: SharedArrayBuffer, v: number): void => {
    Atomics.store(new Int32Array(gate), 0, v);
    futexWake(gate, 0);
  };
  const dispatchOf = (vp: LoneVp): number => Atomics.load(new Int32Array(vp.start.vpRegion), (vpPageOffset(0) + VpPage.dispatch) >> 2);
  /**
   * A lone VP started behind a go region whose word 0 is `word` (and held past it with `held`),
   * given to `body`; stopped and its worker ended after, whatever `body` did. Skipped where the
   * futex the gate needs is not there.
   */
  const withGatedVp = async (ctx: Mocha.Context, word: number, held: boolean, body: (vp: LoneVp, gate: SharedArrayBuffer) => Promise<void>): Promise<void> => {
    if (FUTEX_NR[process.arch] === undefined) ctx.skip();
    const gate = new SharedArrayBuffer(4096);
    setGate(gate, word);
    const vp = await startLoneVp({ runGate: gate, ...(held ? { held: true } : {}) });
    try {
      await body(vp, gate);
    } finally {
      stopVpThreads(vp.start.control, vp.wake);
      await vp.worker.terminate();
    }
  };
  /** Once the VP asked for its LP (Dispatch.Start, a ring nobody answers): stopped and joined. */
  const askedThenStopped = async (vp: LoneVp): Promise<void> => {
    await until(() => dispatchOf(vp) === Dispatch.Start);
    expect(stopVpThreads(vp.start.control, vp.wake)).to.equal(true);
    await vp.stopped;
  };

  it('a migrated VM\'s VP released at Start says it is online, then waits for Run before it asks for an LP', async function () {
    await withGatedVp(this, GoWord.Start, false, async (vp, gate) => {
      // Online, and in its wait for Run: a shared futex wait for the value Start (with a timeout, to
      // look at the stop word), and its dispatch word not yet written.
      await until(() => futexWaiters(GoWord.Start).some((w) => w.timeout > 0n));
      expect(dispatchOf(vp), 'the dispatch word before Run').to.equal(0);
      // A value other than Run is not a go either.
      setGate(gate, 7);
      await until(() => futexWaiters(7).some((w) => w.timeout > 0n));
      expect(dispatchOf(vp), 'the dispatch word after a stray value').to.equal(0);
      // Run: the VP asks for its LP (and then waits on its dispatch word, as any VP nobody grants).
      setGate(gate, GoWord.Run);
      await askedThenStopped(vp);
    });
  });

  it('a VP started ahead of its kernel (CTL_HELD) waits past Run until the kernel lets it go, then asks for an LP', async function () {
    await withGatedVp(this, GoWord.Start, true, async (vp, gate) => {
      setGate(gate, GoWord.Run);
      // Past the gate, and held: a futex wait on CTL_HELD for the value 1, its dispatch word not written.
      await until(() => futexWaiters(1).some((w) => w.timeout > 0n));
      expect(dispatchOf(vp), 'the dispatch word while held').to.equal(0);
      await new Promise((r) => setTimeout(r, 50));
      expect(dispatchOf(vp), 'still held after its timeouts').to.equal(0);
      Atomics.store(new Int32Array(vp.start.control), CTL_HELD, 0);
      futexWake(vp.start.control, CTL_HELD);
      await askedThenStopped(vp);
    });
  });

  it('a held VP is stopped by stopVpThreads (it looks at the stop word while held)', async function () {
    await withGatedVp(this, GoWord.Run, true, async (vp) => {
      // Past its gate (Run already), in its held wait: a futex wait on CTL_HELD for the value 1.
      await until(() => futexWaiters(1).some((w) => w.timeout > 0n));
      expect(stopVpThreads(vp.start.control, vp.wake)).to.equal(true);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(0);
      await vp.stopped;
      expect(dispatchOf(vp), 'it never asked for an LP').to.equal(0);
    });
  });

  it('a VP still waiting for Run is stopped by stopVpThreads (it looks at the stop word while it waits)', async () => {
    const gate = new SharedArrayBuffer(4096);
    Atomics.store(new Int32Array(gate), 0, GoWord.Start);
    const vp = await startLoneVp({ runGate: gate });
    try {
      expect(stopVpThreads(vp.start.control, vp.wake)).to.equal(true);
      expect(Atomics.load(new Int32Array(vp.start.control), CTL_LIVE)).to.equal(0);
      await vp.stopped;
      expect(Atomics.load(new Int32Array(vp.start.vpRegion), (vpPageOffset(0) + VpPage.dispatch) >> 2), 'it never asked for an LP').to.equal(0);
    } finally {
      await vp.worker.terminate();
    }
  });

  it('a process whose VP waits for an LP exits on process.exit once its exit handler stopped the VP', async () => {
    const c = spawn(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', fixture, 'vp-exit'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      const code = await new Promise<number | null>((r) => c.once('exit', (x) => r(x)));
      expect(code, stderr).to.equal(0);
    } finally {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  });

  it('a VP that halts rings the scheduler only while its region asks for it (haltRing), and its halt is on its dispatch word either way', async function () {
    if (FUTEX_NR[process.arch] === undefined) this.skip();
    const vp = await startLoneVp();
    const i32 = new Int32Array(vp.start.vpRegion);
    const disp = (vpPageOffset(0) + VpPage.dispatch) >> 2;
    const bell = new Int32Array(vp.start.sched!);
    const rings = (): number => Atomics.load(bell, SchedRegion.doorbell >> 2);
    const asleepOn = async (value: number): Promise<void> => {
      while (futexWaiters(value).length === 0) await new Promise((r) => setTimeout(r, 5));
    };
    /** Grants the LP as the scheduler does; the idle VP finds nothing to run and halts. */
    const grantAndHalt = async (): Promise<void> => {
      Atomics.store(i32, disp, Dispatch.Granted);
      futexWake(vp.start.vpRegion, disp);
      while (Atomics.load(i32, disp) !== Dispatch.Halt) await new Promise((r) => setTimeout(r, 5));
      await asleepOn(Dispatch.Halt); // past its ring, if it rang
    };
    try {
      await asleepOn(Dispatch.Start);
      const asked = rings();
      expect(asked, 'the ring that asked for an LP').to.equal(1);
      await grantAndHalt();
      expect(rings(), 'rings after a halt with haltRing 0').to.equal(asked);
      Atomics.store(i32, VpRegionHeader.haltRing >> 2, 1);
      await grantAndHalt();
      expect(rings(), 'rings after a halt with haltRing 1').to.equal(asked + 1);
      Atomics.store(i32, VpRegionHeader.haltRing >> 2, 0);
      await grantAndHalt();
      expect(rings(), 'rings after a halt with haltRing 0 again').to.equal(asked + 1);
    } finally {
      stopVpThreads(vp.start.control, vp.wake);
      await vp.worker.terminate();
    }
  });

  it('an interrupt asserted while a VP halts without a ring is never left pending: the VP takes it, or its halt is seen by the signaller (seeded random timing)', async function () {
    if (FUTEX_NR[process.arch] === undefined) this.skip();
    this.timeout(120000);
    const vp = await startLoneVp();
    const i32 = new Int32Array(vp.start.vpRegion);
    const disp = (vpPageOffset(0) + VpPage.dispatch) >> 2;
    const apic = new VirtualApicView(i32, vpPageOffset(0));
    const taken = new BigInt64Array(vp.start.vpRegion, vpPageOffset(0) + VpPage.probeTakenNs, 1);
    const grant = (): void => {
      Atomics.store(i32, disp, Dispatch.Granted);
      futexWake(vp.start.vpRegion, disp);
    };
    let seed = 12345;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    let byVp = 0;
    let bySignaller = 0;
    try {
      while (futexWaiters(Dispatch.Start).length === 0) await new Promise((r) => setTimeout(r, 5));
      for (let i = 0; i < 300; i++) {
        const before = Atomics.load(taken, 0);
        grant(); // the idle VP finds nothing to run and halts quietly (haltRing is 0)
        const until = process.hrtime.bigint() + BigInt(Math.floor(rnd() * 300_000));
        while (process.hrtime.bigint() < until) { /* a random moment of its halt */ }
        // The signalling path: assert, then read the dispatch word; dispatch only a VP that is not on its LP.
        apic.assert(PROBE_VECTOR_MIN);
        const d = Atomics.load(i32, disp);
        if (d === Dispatch.Halt && Atomics.compareExchange(i32, disp, Dispatch.Halt, Dispatch.Off) === Dispatch.Halt) {
          bySignaller++;
          grant();
        } else byVp++;
        // Stuck: asleep in its halt with the interrupt pending, three looks in a row. The three reads
        // of one look are not one snapshot: between them the VP may take its halt back, take the
        // interrupt and halt again (CI saw that once), so a look counts only if the VP has still
        // not taken the interrupt after it; a VP really left asleep stays so for every look.
        let looks = 0;
        for (;;) {
          if (Atomics.load(taken, 0) !== before) break;
          const asleep = Atomics.load(i32, disp) === Dispatch.Halt && apic.pending(PROBE_VECTOR_MIN) && futexWaiters(Dispatch.Halt).length > 0;
          looks = asleep && Atomics.load(taken, 0) === before ? looks + 1 : 0;
          expect(looks < 3, `round ${i}: the VP sleeps in its halt with the interrupt pending, and the signaller saw ${d === Dispatch.Halt ? 'Halt' : 'Granted'}`).to.equal(true);
          await new Promise((r) => (looks > 0 ? setTimeout(r, 2) : setImmediate(r)));
        }
        // Back to a quiet halt before the next round.
        while (!(Atomics.load(i32, disp) === Dispatch.Halt && futexWaiters(Dispatch.Halt).length > 0)) await new Promise((r) => setTimeout(r, 1));
      }
      expect(byVp + bySignaller).to.equal(300);
    } finally {
      stopVpThreads(vp.start.control, vp.wake);
      await vp.worker.terminate();
    }
  });
});
