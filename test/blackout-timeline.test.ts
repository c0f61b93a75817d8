/**
 * scripts/blackout-timeline.ts: its two decoders (perf sched timehist lines, the VMWP's "blackout
 * instants" log lines) and its accounting of a window. Lines taken from a recorded trace of this
 * machine; garbage of every kind is skipped, never thrown on.
 */
import { expect } from 'chai';
import { seededRandom } from '@hvlab/protocol';
import { parseBlackouts, parseTimehist, timeline, useWithin } from '../scripts/blackout-timeline.js';

const TRACE = `           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
   30593.156059 [0001]  <idle>                              0.043      0.000      2.066
   30593.157213 [0000]  hvlab-vmwp d5b5[3962]               0.017      0.000      3.170
   30593.157659 [0001]  hvlab-hyperviso[3917/3893]        177.637      0.057      0.914
   30593.162740 [0000]  hvlab-vmwp ce27[3947]                                            awakened: hvlab-partition[4065/3956]
   30593.164463 [0000]  hvlab-partition[3956]             193.690      0.013      1.635
   30593.165392 [0001]  hvlab-vmwp ce27[3947]               1.279      1.000      1.337
`;

const instants = (o: Record<string, unknown>): string => JSON.stringify({ level: 30, vm: 'idle', host: 'd5b51f', msg: 'blackout instants (CLOCK_MONOTONIC ns)', ...o });

describe('blackout timeline (scripts/blackout-timeline.ts)', () => {
  it('takes the switch records of a timehist and skips its header and wake-up lines', () => {
    const r = parseTimehist(TRACE);
    expect(r.map((x) => x.task)).to.deep.equal(['<idle>', 'hvlab-vmwp d5b5[3962]', 'hvlab-hyperviso[3917/3893]', 'hvlab-partition[3956]', 'hvlab-vmwp ce27[3947]']);
    expect(r[1]).to.deep.equal({ endS: 30593.157213, cpu: 0, task: 'hvlab-vmwp d5b5[3962]', waitMs: 0.017, schedDelayMs: 0, runMs: 3.17 });
  });

  it('counts each thread\'s run and runnable wait within a window, and the idle CPUs apart', () => {
    const r = parseTimehist(TRACE);
    // 30593.162 s to 30593.165 s: the partition ran 162.828-164.463 (1.635 ms); the destination
    // VMWP waited 163.055-164.055 runnable and ran 164.055-165.0 of its 1.337 ms.
    const u = useWithin(r, 30593.162e9, 30593.165e9);
    expect(u.ms).to.be.closeTo(3, 1e-6);
    expect(u.tasks.get('hvlab-partition[3956]')!.runMs).to.be.closeTo(1.635, 1e-3);
    expect(u.tasks.get('hvlab-vmwp ce27[3947]')!.runMs).to.be.closeTo(0.945, 1e-3);
    expect(u.tasks.get('hvlab-vmwp ce27[3947]')!.waitMs).to.be.closeTo(1.0, 1e-3);
    expect(u.tasks.has('<idle>')).to.equal(false);
    expect(u.tasks.has('hvlab-vmwp d5b5[3962]')).to.equal(false);
    // The idle record 30593.153993-30593.156059 lies in a window from 30593.155 s for 1.059 ms.
    expect(useWithin(r, 30593.155e9, 30593.1565e9).idleMs).to.be.closeTo(1.059, 1e-3);
  });

  it('takes blackout instants only when they are ordered numbers, and reports the ones the trace covers', () => {
    const good = { blackoutNs: 30593156500360, sentNs: 30593160942540, ranAtNs: 30593165000000, heardNs: 30593175801257 };
    const log = [
      instants(good),
      instants({ ...good, ranAtNs: null }),
      instants({ ...good, sentNs: good.blackoutNs - 1 }), // sent before the blackout
      instants({ ...good, ranAtNs: good.heardNs + 1 }), // ran after the answer came
      instants({ ...good, heardNs: 'soon' }),
      instants({ ...good, blackoutNs: Number.MAX_VALUE * 0 - 5 }),
      '{"msg":"blackout instants", "blackoutNs": {"valueOf": 1}}',
      'blackout instants but not JSON {',
      'null',
    ].join('\n');
    const b = parseBlackouts(log);
    expect(b).to.have.length(2);
    expect(b[0]).to.deep.equal({ vm: 'idle', host: 'd5b51f', ...good });
    expect(b[1]!.ranAtNs).to.equal(null);
    const report = timeline(parseTimehist(TRACE), b.slice(0, 1));
    expect(report).to.match(/VM idle from host d5b51f, blackout at 30593\.156500 s: 8\.50 ms to the first dispatch/);
    expect(report).to.match(/destination \(sent to the first dispatch\): 4\.06 ms/);
    expect(report).to.include('hvlab-partition[3956]');
    // A blackout outside the trace (another clock) is named, not reported as empty.
    expect(timeline(parseTimehist(TRACE), [{ ...b[0]!, blackoutNs: 1, sentNs: 2, ranAtNs: 3, heardNs: 4 }])).to.match(/none of the 1 logged blackouts lies within the trace/);
  });

  it('skips whatever else a file holds (seeded fuzz: random bytes, mangled lines)', () => {
    const next = seededRandom(0xb1ac);
    const lines = [...TRACE.split('\n'), instants({ blackoutNs: 1, sentNs: 2, ranAtNs: 3, heardNs: 4 })];
    for (let i = 0; i < 2000; i++) {
      let text: string;
      if (i % 2 === 0) {
        text = String.fromCharCode(...Array.from({ length: Math.floor(next() * 300) }, () => Math.floor(next() * 0x3000)));
      } else {
        const l = lines[Math.floor(next() * lines.length)]!;
        const at = Math.floor(next() * (l.length + 1));
        text = l.slice(0, at) + String.fromCharCode(Math.floor(next() * 128)) + l.slice(at + Math.floor(next() * 4));
      }
      const r = parseTimehist(text);
      for (const x of r) expect([x.endS, x.cpu, x.waitMs, x.schedDelayMs, x.runMs].every(Number.isFinite)).to.equal(true);
      for (const b of parseBlackouts(text)) expect(b.blackoutNs <= b.sentNs && b.sentNs <= b.heardNs).to.equal(true);
      expect(typeof timeline(r, parseBlackouts(text))).to.equal('string');
    }
  });
});
