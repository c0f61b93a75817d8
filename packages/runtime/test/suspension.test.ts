/**
 * The partition process's wait for a suspension by its number (waitForSuspension): what the VMWP's
 * freeze relies on when it sends its request beside the Suspend call instead of after its answer.
 */
import { expect } from 'chai';
import { VpPage, VpRegionHeader, VpRunState, vpPageOffset, vpRegionBytes } from '@hvlab/protocol';
import { futexWake, wordWatchAvailable } from '@hvlab/shm';
import { seededRandom } from '@hvlab/protocol';
import { waitForSuspension } from '../src/suspension.js';

const VPS = 2;
function region(): { sab: SharedArrayBuffer; i32: Int32Array; setTaken: (n: number, wake?: boolean) => void; setState: (vp: number, s: number) => void } {
  const sab = new SharedArrayBuffer(vpRegionBytes(VPS));
  const i32 = new Int32Array(sab);
  return {
    sab, i32,
    setTaken: (n, wake = true) => {
      Atomics.store(i32, VpRegionHeader.suspendTaken >> 2, n);
      if (wake) futexWake(sab, VpRegionHeader.suspendTaken >> 2);
    },
    setState: (vp, s) => Atomics.store(i32, (vpPageOffset(vp) + VpPage.state) >> 2, s),
  };
}
/** Whether `p` settled within `ms` (a liveness bound, never a speed). */
async function settles(p: Promise<unknown>, ms: number): Promise<'resolved' | 'rejected' | 'pending'> {
  return await Promise.race([p.then(() => 'resolved' as const, () => 'rejected' as const), new Promise<'pending'>((r) => setTimeout(() => r('pending'), ms))]);
}
const never = (): boolean => false;

describe('waiting for a suspension by its number (waitForSuspension)', function () {
  this.timeout(30000);

  it('pages showing Suspended under an earlier number are not this suspension: it waits until its own number is taken', async () => {
    const r = region();
    // Suspension 4 was taken and every page still shows it (a thaw the scheduler has not yet seen).
    r.setTaken(4, false);
    r.setState(0, VpRunState.Suspended);
    r.setState(1, VpRunState.Suspended);
    const w = waitForSuspension(r.sab, VPS, 5, { timeoutMs: 20000, calledOff: never });
    expect(await settles(w, 150), 'number 4 does not satisfy a wait for 5').to.equal('pending');
    r.setTaken(5);
    expect(await settles(w, 15000)).to.equal('resolved');
  });

  it('waits for every VP page too, and takes an absent VP as stopped', async () => {
    const r = region();
    r.setTaken(1);
    r.setState(0, VpRunState.Running);
    r.setState(1, VpRunState.Absent);
    const w = waitForSuspension(r.sab, VPS, 1, { timeoutMs: 20000, calledOff: never });
    expect(await settles(w, 100)).to.equal('pending');
    r.setState(0, VpRunState.Suspended); // no wake: the page is looked at again
    expect(await settles(w, 15000)).to.equal('resolved');
  });

  it('counts in 32-bit arithmetic: a number that wrapped past 2^31 is still later than the one before it', async () => {
    const r = region();
    r.setState(0, VpRunState.Suspended);
    r.setState(1, VpRunState.Suspended);
    r.setTaken(0x7fffffff, false);
    const wrapped = (0x7fffffff + 1) | 0;
    const w = waitForSuspension(r.sab, VPS, wrapped, { timeoutMs: 20000, calledOff: never });
    expect(await settles(w, 100)).to.equal('pending');
    r.setTaken(wrapped);
    expect(await settles(w, 15000)).to.equal('resolved');
    // Already taken: at once.
    await waitForSuspension(r.sab, VPS, 0x7fffffff, { timeoutMs: 0, calledOff: never });
  });

  it('sleeps on the count (with the addon, a handful of sleeps in 100 ms, not one per millisecond), and a wait called off ends with an error', async () => {
    const r = region();
    r.setState(0, VpRunState.Suspended);
    r.setState(1, VpRunState.Suspended);
    let woken: (() => void) | null = null;
    let sleeps = 0;
    let off = false;
    const w = waitForSuspension(r.sab, VPS, 9, { timeoutMs: 20000, calledOff: () => off, onSleep: (wake) => { if (wake) sleeps++; woken = wake; } });
    await new Promise((res) => setTimeout(res, 100));
    expect(woken, 'asleep, with a way to be woken').to.be.a('function');
    if (wordWatchAvailable()) {
      // Each sleep lasts 20 ms unless woken: over 100 ms, a handful, not one per millisecond.
      expect(sleeps).to.be.within(1, 10);
    }
    off = true;
    woken!();
    const err = await w.then(() => null, (e: Error) => e);
    expect(err?.message).to.match(/called off/);
    expect(woken, 'no sleeper left').to.equal(null);
  });

  it('a wait called off while it slept ends with its error even when the VPs stopped meanwhile (the thaw overtook the quiesce)', async () => {
    const r = region();
    let woken: (() => void) | null = null;
    let off = false;
    const w = waitForSuspension(r.sab, VPS, 2, { timeoutMs: 20000, calledOff: () => off, onSleep: (wake) => { woken = wake; } });
    await new Promise((res) => setTimeout(res, 50));
    expect(woken, 'asleep').to.be.a('function');
    // The thaw and the scheduler's pass land in the same sleep: the number taken, every VP stopped, and the wait called off.
    r.setTaken(2, false);
    r.setState(0, VpRunState.Suspended);
    r.setState(1, VpRunState.Suspended);
    off = true;
    woken!();
    const err = await w.then(() => null, (e: Error) => e);
    expect(err?.message).to.match(/called off/);
  });

  it('a VP region with random words (it is guest-writable) only ever ends the wait or times it out (seeded, 300 regions)', async () => {
    const next = seededRandom(0x5e9);
    let ended = 0;
    for (let round = 0; round < 300; round++) {
      const r = region();
      const words = Math.min(r.i32.length, 2048);
      for (let k = 0; k < 64; k++) Atomics.store(r.i32, Math.floor(next() * words), Math.floor(next() * 2 ** 32) | 0);
      // The words the wait reads, set to anything (small values make matches likely).
      for (const idx of [VpRegionHeader.suspendTaken >> 2, (vpPageOffset(0) + VpPage.state) >> 2, (vpPageOffset(1) + VpPage.state) >> 2]) {
        Atomics.store(r.i32, idx, next() < 0.5 ? Math.floor(next() * 6) : Math.floor(next() * 2 ** 32) | 0);
      }
      const seq = next() < 0.5 ? Math.floor(next() * 6) - 1 || 1 : Math.floor(next() * 2 ** 32) | 0 || 1;
      const err = await waitForSuspension(r.sab, VPS, seq, { timeoutMs: 0, calledOff: never }).then(() => null, (e: Error) => e);
      if (err === null) ended++;
      else expect(err.message).to.match(/did not stop at a step boundary/);
    }
    expect(ended, 'some random regions show the suspension').to.be.greaterThan(0);
  });

  it('a number that never comes ends at the timeout with a sentence', async () => {
    const r = region();
    const err = await waitForSuspension(r.sab, VPS, 3, { timeoutMs: 50, calledOff: never }).then(() => null, (e: Error) => e);
    expect(err?.message).to.match(/did not stop at a step boundary within 0.05 s/);
  });
});
