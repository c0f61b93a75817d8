/**
 * The integration services' shared timer (ic/ticker.ts), on a fake clock: the time sync sample
 * rides on the heartbeat's wake-ups (never more than its tolerance early, never late) while both
 * keep their average periods, a job that throws does not stop the others, a stopped job stops, and
 * one that fell behind runs once.
 */
import { expect } from 'chai';
import { HEARTBEAT_INTERVAL_MS, heartbeatLostAfterMs } from '@hvlab/protocol/heartbeat';
import { signalsHeld, whenReleased } from '@hvlab/protocol';
import { IcTicker } from '../src/ic/ticker.js';

function fakeTicker(): { t: IcTicker; clock: { ms: number }; wakes: () => number; runUntil: (end: number) => void } {
  const clock = { ms: 1000 };
  const t = new IcTicker(() => clock.ms);
  let wakes = 0;
  return {
    t,
    clock,
    wakes: () => wakes,
    // Steps the clock to each armed time and fires, as the event loop would.
    runUntil(end: number) {
      while (t.nextAt <= end) {
        clock.ms = t.nextAt;
        wakes++;
        t.fire();
      }
      clock.ms = end;
    },
  };
}

describe('IcTicker (integration services on one timer)', () => {
  it("runs time sync's samples on the heartbeat's wake-ups, within the tolerance, at both periods", () => {
    const { t, clock, wakes, runUntil } = fakeTicker();
    const start = clock.ms;
    const beats: number[] = [];
    const samples: Array<{ at: number; due: number }> = [];
    let sampleDue = start + 5000 + 7; // time sync negotiates a few ms after the heartbeat
    t.every(2000, 0, () => beats.push(clock.ms));
    clock.ms += 7;
    t.every(5000, 1250, () => {
      samples.push({ at: clock.ms, due: sampleDue });
      sampleDue += 5000;
    });
    runUntil(start + 120_000);
    t.clear();
    expect(beats.length).to.equal(60);
    beats.forEach((b, i) => expect(b).to.equal(start + 2000 * (i + 1)));
    expect(samples.length).to.be.within(23, 24);
    for (const s of samples) {
      expect(beats, `sample at ${s.at} has no heartbeat beside it`).to.include(s.at);
      expect(s.due - s.at).to.be.within(0, 1250);
    }
    // One wake-up per beat: the samples never woke the process on their own.
    expect(wakes()).to.equal(60);
  });

  it('keeps running the other jobs when one throws, and stops a job that was stopped', () => {
    const { t, runUntil, clock } = fakeTicker();
    let a = 0;
    let b = 0;
    t.every(100, 0, () => {
      throw new Error('a broken service');
    });
    const stopA = t.every(100, 0, () => a++);
    t.every(100, 0, () => b++);
    runUntil(clock.ms + 500);
    expect([a, b]).to.deep.equal([5, 5]);
    stopA();
    runUntil(clock.ms + 500);
    expect([a, b]).to.deep.equal([5, 10]);
    expect(t.size).to.equal(2);
    t.clear();
    expect(t.nextAt).to.equal(Infinity);
  });

  it('runs a job that fell behind once, and counts its next period from then', () => {
    const { t, clock } = fakeTicker();
    const runs: number[] = [];
    t.every(100, 0, () => runs.push(clock.ms));
    clock.ms += 1050; // a blocked event loop
    t.fire();
    expect(runs).to.deep.equal([clock.ms]);
    expect(t.nextAt).to.equal(clock.ms + 100);
    t.clear();
  });

  it('runs its pollers at each wake-up, before the jobs, and never wakes for them alone', () => {
    const { t, clock, wakes, runUntil } = fakeTicker();
    const order: string[] = [];
    const stopPoll = t.poll(() => order.push(`poll@${clock.ms}`));
    t.poll(() => {
      throw new Error('a broken poller');
    });
    expect(t.nextAt, 'a poller alone arms nothing').to.equal(Infinity);
    t.every(100, 0, () => order.push(`job@${clock.ms}`));
    runUntil(clock.ms + 250);
    expect(order).to.deep.equal(['poll@1100', 'job@1100', 'poll@1200', 'job@1200']);
    expect(wakes()).to.equal(2);
    stopPoll();
    order.length = 0;
    runUntil(clock.ms + 100);
    expect(order).to.deep.equal(['job@1300']);
    t.clear();
  });

  it('refuses a period that is not a positive number', () => {
    const t = new IcTicker();
    for (const p of [0, -1, Number.NaN, Infinity]) expect(() => t.every(p, 0, () => {})).to.throw(RangeError);
    expect(t.size).to.equal(0);
  });

  it("uses Hyper-V's heartbeat defaults: every 2 s, lost 5 s after the last answer", () => {
    expect(HEARTBEAT_INTERVAL_MS).to.equal(2000);
    expect(heartbeatLostAfterMs(2000)).to.equal(5000);
    expect(heartbeatLostAfterMs(50)).to.equal(3000);
  });
  it('holds the signals of a wake-up until its jobs and pollers have all run, then sends them once', () => {
    const { t, runUntil } = fakeTicker();
    const log: string[] = [];
    const signal = (what: string): void => {
      // As the hypercall client does: a signal made while held waits for the release.
      if (signalsHeld()) whenReleased(() => log.push(`sent ${what}`));
      else log.push(`sent ${what} at once`);
    };
    t.poll(() => {
      log.push(`poll held=${signalsHeld()}`);
      signal('poll');
    });
    t.every(2000, 0, () => {
      log.push('beat');
      signal('beat');
    });
    t.every(2000, 0, () => {
      log.push('sample');
      signal('sample');
      throw new Error('a job that throws does not lose the held signals');
    });
    runUntil(3100);
    expect(log).to.deep.equal(['poll held=true', 'beat', 'sample', 'sent poll', 'sent beat', 'sent sample']);
    expect(signalsHeld(), 'nothing held after the wake-up').to.equal(false);
    signal('later');
    expect(log.at(-1)).to.equal('sent later at once');
  });
});
