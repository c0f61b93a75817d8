/**
 * The scheduler thread's bell poll after hypercalls (BellPoll) adapts as KVM's halt polling does.
 * Times here are the numbers the thread would pass (ns); nothing waits on a clock. Also what stops
 * the poll: VP threads that run work (SchedulerLoop.busyVps).
 */
import { expect } from 'chai';
import { Dispatch, VpPage, vpPageOffset, vpRegionBytes } from '@hvlab/protocol';
import { BellPoll, HC_POLL_BASE_NS, HC_POLL_MAX_NS, SchedulerLoop } from '../src/sched-thread.js';
import { hcPollMaxNs, wakeYield } from '../src/server.js';

/** One turn of the thread: a pass served calls at `at`, then a poll that gave up (or caught a ring). */
function turn(p: BellPoll, at: number, woke: boolean, caught = false): number {
  p.served(at);
  const w = p.window(woke);
  p.ended(at, caught);
  return w;
}

describe('BellPoll: the bell poll after hypercalls', () => {
  it('starts at the base window, and does not poll after waking a VP', () => {
    const p = new BellPoll();
    expect(p.window(false)).to.equal(HC_POLL_BASE_NS);
    expect(p.window(true)).to.equal(0);
  });

  it('doubles the window while calls come within the longest poll, up to it, and then polls after waking a VP too', () => {
    const p = new BellPoll();
    let t = 0;
    const windows: number[] = [];
    for (let i = 0; i < 6; i++) {
      windows.push(turn(p, t, true));
      t += 100_000; // the next call 100 µs after the last poll started: a longer poll would have caught it
    }
    expect(windows[0]).to.equal(0);
    expect(windows.slice(1)).to.deep.equal([2 * HC_POLL_BASE_NS, 4 * HC_POLL_BASE_NS, HC_POLL_MAX_NS, HC_POLL_MAX_NS, HC_POLL_MAX_NS]);
  });

  it('halves the window when a call comes later than the longest poll, never below the base', () => {
    const p = new BellPoll();
    let t = 0;
    for (let i = 0; i < 5; i++, t += 50_000) turn(p, t, false);
    expect(p.ns).to.equal(HC_POLL_MAX_NS);
    const after: number[] = [];
    for (let i = 0; i < 6; i++) {
      t += 5_000_000; // 5 ms later each time
      p.served(t);
      after.push(p.ns);
      p.ended(t, false);
    }
    expect(after).to.deep.equal([HC_POLL_MAX_NS / 2, HC_POLL_MAX_NS / 4, HC_POLL_BASE_NS, HC_POLL_BASE_NS, HC_POLL_BASE_NS, HC_POLL_BASE_NS]);
    expect(p.window(true)).to.equal(0);
  });

  it('keeps the window when a poll caught the next ring', () => {
    const p = new BellPoll();
    let t = 0;
    for (let i = 0; i < 3; i++, t += 60_000) turn(p, t, false);
    turn(p, t, false, true); // learns from the poll before it (gave up, the call came 60 µs on), then catches
    const before = p.ns;
    expect(before).to.equal(HC_POLL_MAX_NS);
    for (let i = 0; i < 10; i++) turn(p, (t += 10_000_000), false, true);
    expect(p.ns).to.equal(before);
  });

  it('never grows for calls that come milliseconds apart (an idle host: a heartbeat now and then)', () => {
    const p = new BellPoll();
    const windows = new Set<number>();
    for (let t = 0; t < 1e9; t += 1_500_000) {
      windows.add(turn(p, t, false));
      expect(p.window(true)).to.equal(0);
    }
    expect([...windows]).to.deep.equal([HC_POLL_BASE_NS]);
  });

  it('learns nothing from turns it could not poll (VP threads that ran work took the CPUs)', () => {
    const p = new BellPoll();
    let t = 0;
    for (let i = 0; i < 10; i++, t += 50_000) {
      p.served(t);
      p.skipped();
    }
    expect(p.ns, 'calls 50 µs apart, none polled for').to.equal(HC_POLL_BASE_NS);
    turn(p, t, false);
    expect(p.ns).to.equal(HC_POLL_BASE_NS);
    turn(p, (t += 50_000), false);
    expect(p.ns, 'learning again once it polls').to.equal(2 * HC_POLL_BASE_NS);
  });
});

describe('the longest bell poll (HVLAB_HC_POLL_MAX_US)', () => {
  it('at the base, the window never grows: the base after a pass that woke no VP, no poll after one that did', () => {
    const p = new BellPoll(HC_POLL_BASE_NS);
    let t = 0;
    for (let i = 0; i < 20; i++, t += 30_000) {
      expect(turn(p, t, i % 2 === 0)).to.equal(i % 2 === 0 ? 0 : HC_POLL_BASE_NS);
    }
    expect(p.ns).to.equal(HC_POLL_BASE_NS);
  });

  it('a larger one lets the window grow to it, and calls farther apart than it shrink it', () => {
    const p = new BellPoll(800_000);
    let t = 0;
    for (let i = 0; i < 8; i++, t += 500_000) turn(p, t, false);
    expect(p.ns).to.equal(800_000);
    for (let i = 0; i < 8; i++) turn(p, (t += 2_000_000), false);
    expect(p.ns).to.equal(HC_POLL_BASE_NS);
  });

  it('reads whole microseconds from 0 to 10000, and nothing else', () => {
    expect(hcPollMaxNs('25')).to.equal(25_000);
    expect(hcPollMaxNs(' 400 ')).to.equal(400_000);
    expect(hcPollMaxNs('0')).to.equal(0);
    for (const bad of [undefined, '', '-5', '1e3', '12.5', '20000', 'abc', '99999999']) expect(hcPollMaxNs(bad), String(bad)).to.equal(null);
  });
});

describe('the yield after a wake-up (HVLAB_WAKE_YIELD)', () => {
  it('reads 1 and 0, and nothing else', () => {
    expect(wakeYield('1')).to.equal(true);
    expect(wakeYield(' 0 ')).to.equal(false);
    for (const bad of [undefined, '', 'yes', 'true', '2', '01', '-1']) expect(wakeYield(bad), String(bad)).to.equal(null);
  });
});

describe('SchedulerLoop.busyVps: VP threads that run work', () => {
  it('counts a VP granted its LP long enough ago and still running, not one just granted or halted since', () => {
    const region = new SharedArrayBuffer(vpRegionBytes(2));
    const i32 = new Int32Array(region);
    const loop = new SchedulerLoop({ lps: 2 }, () => undefined);
    const t0 = Number(process.hrtime.bigint());
    loop.handle({ t: 'addPartition', id: 5, region, suspended: false, weight: 100, reserve: 0, cap: 1 }, t0);
    const d = [0, 1].map((i) => (vpPageOffset(i) + VpPage.dispatch) >> 2);
    for (const i of [0, 1]) {
      loop.handle({ t: 'addVp', id: 5, index: i }, t0);
      Atomics.store(i32, d[i]!, Dispatch.Start);
    }
    loop.pass(t0);
    expect(d.map((w) => Atomics.load(i32, w))).to.deep.equal([Dispatch.Granted, Dispatch.Granted]);
    expect(loop.busyVps(t0 + 100_000, 200_000), 'granted 100 µs ago').to.equal(0);
    expect(loop.busyVps(t0 + 300_000, 200_000), 'granted 300 µs ago, both running').to.equal(2);
    // A pass past a quantum's end with nobody waiting gives them fresh quanta: they still hold their LPs.
    const later = t0 + 50_000_000;
    loop.pass(later);
    expect(d.map((w) => Atomics.load(i32, w))).to.deep.equal([Dispatch.Granted, Dispatch.Granted]);
    expect(loop.busyVps(later + 1_000, 200_000), 'running for 50 ms through a fresh quantum').to.equal(2);
    // VP 1 halts quietly (no ring, no pass yet): it still holds its LP in the scheduler's books.
    Atomics.store(i32, d[1]!, Dispatch.Halt);
    expect(loop.busyVps(later + 1_000, 200_000), 'one halted since').to.equal(1);
  });
});
