/**
 * The scheduler thread's bell poll after hypercalls (BellPoll) adapts as KVM's halt polling does.
 * Times here are the numbers the thread would pass (ns); nothing waits on a clock.
 */
import { expect } from 'chai';
import { BellPoll, HC_POLL_BASE_NS, HC_POLL_MAX_NS } from '../src/sched-thread.js';

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
});
