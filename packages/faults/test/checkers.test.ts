/**
 * The checkers over recorded readings and fault records, without processes: a clean record
 * passes every check, and each check catches its planted violation — a counter that restarts
 * without a kill fails progress (and one restarted by a kill fault does not), a heartbeat that
 * never comes back fails liveness, a VM no fault touched that stalls fails isolation (while one
 * whose host did not answer is unknown, not stalled), a flipped bit fails the memdirty check,
 * anything left fails cleanup. Recovery times are measured from a fault's end to the VM's progress
 * and heartbeat, or to the hosts hearing each other again. The hosts' answers are read by
 * checking functions that take what they understand and never throw.
 */
import { expect } from 'chai';
import { seededRandom } from '@hvlab/protocol';
import {
  checkCleanup, checkIsolation, checkLiveness, checkMemory, checkPlacement, checkProgress, faultEffect, heartbeatStatus, hostAt, movedNotBack, longestOutside, memdirtyCheck, peersMissed, recoveryTimes, vmReading,
  type ChaosWorld, type CleanupObservation, type FaultRecord, type HostSample, type MoveRecord, type Observation, type VmSample,
} from '../src/index.js';

const T0 = 1_800_000_000_000;
const END = 30_000;
const STEP = 400;
const world: ChaosWorld = {
  hosts: ['h1', 'h2'],
  links: [['h1', 'h2']],
  vms: [{ name: 'a', host: 'h1', workload: 'counter' }, { name: 'b', host: 'h2', workload: 'counter' }, { name: 'c', host: 'h2', workload: 'counter' }],
};

/** What a VM looks like at offset `ms`: by default counting 1000/s with its heartbeat OK. */
type Look = (vm: string, ms: number) => Partial<VmSample> | null;

function record(look: Look = () => null, hostLook: (host: string, ms: number) => Partial<HostSample> | null = () => null): { vms: VmSample[]; hosts: HostSample[] } {
  const vms: VmSample[] = [];
  const hosts: HostSample[] = [];
  for (let ms = 0; ms <= END; ms += STEP) {
    for (const v of world.vms) vms.push({ t: T0 + ms, vm: v.name, host: v.host, answered: true, state: 'Running', progress: ms, heartbeat: 'OK', ...(look(v.name, ms) ?? {}) });
    for (const h of world.hosts) hosts.push({ t: T0 + ms, host: h, answered: true, peersMissed: { [h === 'h1' ? 'h2' : 'h1']: 0 }, ...(hostLook(h, ms) ?? {}) });
  }
  return { vms, hosts };
}

function fault(o: Partial<FaultRecord> & { id: string; kind: FaultRecord['kind']; from: number; to: number | null; vms?: string[]; hosts?: string[]; procs?: Array<{ role: 'partition' | 'vmwp' | 'root' | 'hypervisor' | 'fabric'; host: string; vm: string | null }>; links?: Array<[string, string]> }): FaultRecord {
  const vms = (o.vms ?? []).map((v) => ({ vm: v, host: world.vms.find((x) => x.name === v)!.host }));
  return {
    id: o.id, kind: o.kind, target: o.target ?? (vms[0] ? `vm:${vms[0].vm}` : 'cluster'), role: o.role ?? null, params: {}, owner: 'o', seed: 1, forMs: (o.to ?? END) - o.from,
    resolved: { summary: 's', hosts: o.hosts ?? [...new Set(vms.map((v) => v.host))], vms, processes: (o.procs ?? []).map((p, i) => ({ ...p, pid: 1000 + i })), links: o.links ?? [] },
    state: o.state ?? (o.to === null ? 'active' : 'ended'), startedAt: T0 + o.from, endsAt: T0 + (o.to ?? END), endedAt: o.to === null ? null : T0 + o.to, endReason: o.to === null ? null : 'expired', error: null, effect: null,
  };
}

const obs = (r: { vms: VmSample[]; hosts: HostSample[] }, faults: FaultRecord[]): Observation => ({ t0: T0, t1: T0 + END, world, vms: r.vms, hosts: r.hosts, faults });

/** a's partition paused from 5 s to 8 s: its counter stands still, its heartbeat lost from 6 s until 8.8 s. */
const pauseA = fault({ id: 'f1', kind: 'pause', from: 5000, to: 8000, vms: ['a'], procs: [{ role: 'partition', host: 'h1', vm: 'a' }] });
const pausedLook: Look = (vm, ms) => (vm !== 'a' ? null : { progress: ms < 5000 ? ms : ms < 8000 ? 5000 : ms - 3000, heartbeat: ms >= 6000 && ms < 8800 ? 'LostCommunication' : 'OK' });

describe('chaos checkers', () => {
  it('moves: a VM\'s host follows its completed moves; a host fault touches the VMs there at its start; a move\'s window is excused from isolation, not from progress', () => {
    const move = (o: Partial<MoveRecord>): MoveRecord => ({ id: 'm1', vm: 'a', from: 'h1', to: 'h2', method: 'precopy', atMs: 10_000, startedAt: T0 + 10_000, endedAt: T0 + 12_000, status: 'completed', downtimeMs: 15, totalMs: 2000, error: null, ...o });
    const m1 = move({});
    expect(hostAt(world, [m1], 'a', T0 + 11_000)).to.equal('h1');
    expect(hostAt(world, [m1], 'a', T0 + 12_000)).to.equal('h2');
    expect(hostAt(world, [move({ status: 'failed' })], 'a', T0 + 20_000), 'a failed move leaves it').to.equal('h1');
    const lp = fault({ id: 'f1', kind: 'lp-shrink', from: 15_000, to: 17_000, hosts: ['h2'] });
    expect(faultEffect(lp, world, T0 + END).vms).to.deep.equal(['b', 'c']);
    expect(faultEffect(lp, world, T0 + END, [m1]).vms, 'a is on h2 by then').to.deep.equal(['a', 'b', 'c']);
    // a stands still for 2.8 s and is not listed on its old host once: the move's doing.
    const moving: Look = (vm, ms) => (vm !== 'a' ? null : ms >= 10_000 && ms < 12_800 ? { progress: 10_000, ...(ms === 12_400 ? { state: 'NotListed' } : {}) } : ms >= 12_800 ? { progress: ms - 2800 } : null);
    const o: Observation = { ...obs(record(moving), []), moves: [m1] };
    const iso = checkIsolation(o, 2000, 1000);
    expect(iso.held, iso.evidence.join('; ')).to.equal(true);
    expect(checkIsolation({ ...o, moves: [] }, 2000, 1000).held, 'without the move it is a stall').to.equal(false);
    // A counter that restarts across a move is a violation all the same.
    const restarted: Look = (vm, ms) => (vm !== 'a' ? null : ms >= 12_000 ? { progress: ms - 12_000 } : null);
    expect(checkProgress({ ...obs(record(restarted), []), moves: [m1] }, 1000).held).to.equal(false);
  });

  it('placement: each VM on exactly one host, where its moves left it; two copies, none, or another host are violations; a lost post-copy VM says so', () => {
    const m = (o: Partial<MoveRecord>): MoveRecord => ({ id: 'm1', vm: 'a', from: 'h1', to: 'h2', method: 'precopy', atMs: 0, startedAt: T0, endedAt: T0 + 1000, status: 'completed', downtimeMs: 12, totalMs: 900, error: null, ...o });
    const ok = checkPlacement({ listed: { a: [{ host: 'h2', state: 'Running' }], b: [{ host: 'h2', state: 'Running' }] }, unanswered: [], expected: { a: 'h2', b: 'h2' } }, [m({})]);
    expect(ok.held, ok.evidence.join('; ')).to.equal(true);
    expect(ok.evidence).to.deep.equal(['a on h2 only (m1 h1→h2 completed (downtime 12 ms))', 'b on h2 only (not moved)']);
    const two = checkPlacement({ listed: { a: [{ host: 'h1', state: 'Running' }, { host: 'h2', state: 'Running' }] }, unanswered: [], expected: { a: 'h2' } }, [m({})]);
    expect(two.held).to.equal(false);
    expect(two.evidence[0]).to.match(/^a is on 2 hosts: h1 \(Running\), h2 \(Running\)/);
    const lost = checkPlacement({ listed: {}, unanswered: [], expected: { a: 'h1' } }, [m({ method: 'postcopy', status: 'failed', error: 'the destination\'s worker exited' })]);
    expect(lost.evidence[0]).to.match(/^a is on no host: lost in post-copy move m1 \(the destination's worker exited\)/);
    const elsewhere = checkPlacement({ listed: { a: [{ host: 'h1', state: 'Running' }] }, unanswered: [], expected: { a: 'h2' } }, [m({})]);
    expect(elsewhere.evidence[0]).to.match(/^a is on h1, not on h2 where its moves left it/);
    // A last move not over when last seen (a Ctrl-C during its watch took the VM to be at h1):
    // found at its destination, it is where the move may have left it, not a violation; on a
    // third host it is one.
    const notOver = m({ status: 'timeout', downtimeMs: null, error: 'not over after 180 s; its cancel was refused: too late; the run was interrupted 3.0 s later' });
    const atTo = checkPlacement({ listed: { a: [{ host: 'h2', state: 'Running' }] }, unanswered: [], expected: { a: 'h1' } }, [notOver]);
    expect(atTo.held, atTo.evidence.join('; ')).to.equal(true);
    expect(atTo.evidence[0]).to.match(/^a on h2 only, one of the hosts of its move m1, not over when last seen/);
    const atThird = checkPlacement({ listed: { a: [{ host: 'h3', state: 'Running' }] }, unanswered: [], expected: { a: 'h1' } }, [notOver]);
    expect(atThird.held).to.equal(false);
    const silent = checkPlacement({ listed: {}, unanswered: ['h2'], expected: { a: 'h2' } }, []);
    expect(silent.held, 'unknown, not a violation').to.equal(true);
    expect(silent.unknown).to.deep.equal(['host h2 did not answer: the VMs it holds are unknown', 'a is on no host that answered (not moved)']);
  });

  it('a clean record with a paused VM passes liveness, progress and isolation, and measures the pause\'s recovery', () => {
    const o = obs(record(pausedLook), [pauseA]);
    for (const c of [checkLiveness(o, 10_000), checkProgress(o, 10_000), checkIsolation(o, 2000, 10_000)]) expect(c.held, `${c.name}: ${c.evidence.join('; ')}`).to.equal(true);
    const live = checkLiveness(o, 10_000);
    expect(live.evidence.join('\n')).to.match(/a after f1 \(pause vm:a\): heartbeat OK 0\.8 s after the fault ended at \+8\.0s/);
    const [r] = recoveryTimes(o);
    expect(r).to.include({ id: 'f1', recoveredMs: 800 });
    expect(r!.affected).to.deep.equal(['vm:a']);
    expect(r!.detail).to.match(/a: progressing after 0\.4 s, heartbeat OK after 0\.8 s/);
  });

  it('liveness and recovery: a heartbeat still OK just after its fault ended, that goes bad later (the worker notices late), has recovered only when it is OK for good', () => {
    // b's heartbeat channel dropped from 10 s to 14 s: the readings say OK until 15.2 s, then lost until 19.6 s.
    const drop = fault({ id: 'f4', kind: 'vmbus', from: 10_000, to: 14_000, vms: ['b'] });
    const late: Look = (vm, ms) => (vm === 'b' && ms >= 15_200 && ms < 19_600 ? { heartbeat: 'LostCommunication' } : null);
    const o = obs(record(late), [drop]);
    const live = checkLiveness(o, 10_000);
    expect(live.held, live.evidence.join('; ')).to.equal(true);
    expect(live.evidence.join('\n')).to.match(/b after f4 \(vmbus vm:b\): heartbeat OK 5\.6 s after the fault ended at \+14\.0s/);
    expect(recoveryTimes(o)[0]).to.include({ id: 'f4', recoveredMs: 5600 });
    // Not OK again within the bound: a violation.
    expect(checkLiveness(o, 4000).held).to.equal(false);
    // A second fault on b before the bound: the first one is judged with it, not alone.
    const again = fault({ id: 'f5', kind: 'vmbus', from: 16_000, to: 17_000, vms: ['b'] });
    const two = checkLiveness(obs(record(late), [drop, again]), 4000);
    expect(two.evidence.join('\n')).to.match(/b after f4 \(vmbus vm:b\): another fault touched it at \+16\.0s/);
  });

  it('progress: a counter that restarts without a kill fault fails, naming the VM, the values and the times', () => {
    const restarted: Look = (vm, ms) => (vm === 'b' && ms >= 10_000 ? { progress: ms - 10_000 + 3 } : null);
    const c = checkProgress(obs(record(restarted), []), 10_000);
    expect(c.held).to.equal(false);
    expect(c.evidence).to.have.length(1);
    expect(c.evidence[0]).to.match(/^b: counter went back from 9,600 to 3 between \+9\.6s and \+10\.0s/);
    // The same drop while a kill fault of b was under way is its restart, not a violation.
    const kill = fault({ id: 'f2', kind: 'kill', from: 9800, to: 10_000, vms: ['b'], procs: [{ role: 'partition', host: 'h2', vm: 'b' }] });
    const k = checkProgress(obs(record(restarted), [kill]), 10_000);
    expect(k.held, k.evidence.join('; ')).to.equal(true);
    expect(k.evidence.join('\n')).to.match(/restarted by f2 \(kill vm:b\)/);
    // A kill of another VM excuses nothing.
    const other = fault({ id: 'f3', kind: 'kill', from: 9800, to: 10_000, vms: ['c'], procs: [{ role: 'partition', host: 'h2', vm: 'c' }] });
    expect(checkProgress(obs(record(restarted), [other]), 10_000).held).to.equal(false);
  });

  it('liveness: a VM whose heartbeat never comes back after its fault fails; one that comes back after the bound fails too', () => {
    const never: Look = (vm, ms) => (vm === 'a' ? { ...pausedLook(vm, ms), heartbeat: ms >= 6000 ? 'LostCommunication' : 'OK' } : null);
    const c = checkLiveness(obs(record(never), [pauseA]), 10_000);
    expect(c.held).to.equal(false);
    expect(c.evidence.some((e) => /^a after f1 \(pause vm:a\): heartbeat not OK within 10\.0 s of the fault's end at \+8\.0s \(LostCommunication until \+18\.0s\); never OK again/.test(e)), c.evidence.join('\n')).to.equal(true);
    expect(c.evidence.some((e) => /^a: its heartbeat was LostCommunication at the end of the run/.test(e))).to.equal(true);
    const late: Look = (vm, ms) => (vm === 'a' ? { ...pausedLook(vm, ms), heartbeat: ms >= 6000 && ms < 20_000 ? 'NoContact' : 'OK' } : null);
    const l = checkLiveness(obs(record(late), [pauseA]), 10_000);
    expect(l.held).to.equal(false);
    expect(l.evidence[0]).to.match(/OK only at \+20\.0s/);
    // A bound the run did not watch to its end is unknown, not a violation.
    const short = { ...obs(record(never), [pauseA]), t1: T0 + 12_000 };
    short.vms = short.vms.filter((s) => s.t <= short.t1);
    const u = checkLiveness(short, 10_000);
    expect(u.unknown.some((x) => /^a after f1/.test(x))).to.equal(true);
    expect(u.evidence.some((x) => /^a after f1/.test(x))).to.equal(false);
  });

  it('liveness at the end: a VM moved just before it is not OK yet is unknown, not a violation; the end waits for it (movedNotBack); a move long before excuses nothing', () => {
    const move = (o: Partial<MoveRecord>): MoveRecord => ({ id: 'm1', vm: 'a', from: 'h1', to: 'h2', method: 'precopy', atMs: 0, startedAt: T0 + END - 1500, endedAt: T0 + END - 1000, status: 'completed', downtimeMs: 12, totalMs: 500, error: null, ...o });
    // a's heartbeat reads NoContact from the move's start to the end of the run.
    const afterMove: Look = (vm, ms) => (vm === 'a' && ms >= END - 1500 ? { heartbeat: 'NoContact' } : null);
    const late = { ...obs(record(afterMove), []), moves: [move({})] };
    const c = checkLiveness(late, 10_000);
    expect(c.held, c.evidence.join('\n')).to.equal(true);
    expect(c.unknown.some((u) => /^a: its heartbeat was NoContact at the end of the run .*after its move m1 ended, within the 10\.0 s bound/.test(u)), c.unknown.join('\n')).to.equal(true);
    expect(movedNotBack(late, 10_000)).to.deep.equal(['a']);
    // Without the move it is a violation, and nothing is waited for.
    const none = { ...late, moves: [] };
    expect(checkLiveness(none, 10_000).held).to.equal(false);
    expect(movedNotBack(none, 10_000)).to.deep.equal([]);
    // Back to OK after the move: nothing to wait for, and it holds.
    const back: Look = (vm, ms) => (vm === 'a' && ms >= END - 1500 && ms < END - 400 ? { heartbeat: 'NoContact' } : null);
    const ok = { ...obs(record(back), []), moves: [move({})] };
    expect(movedNotBack(ok, 10_000)).to.deep.equal([]);
    expect(checkLiveness(ok, 10_000).held).to.equal(true);
    // A move that ended more than the bound before the end excuses nothing; a refused one never ran.
    const early = { ...late, moves: [move({ startedAt: T0 + 1000, endedAt: T0 + 2000 })] };
    expect(checkLiveness(early, 10_000).held).to.equal(false);
    expect(movedNotBack(early, 10_000)).to.deep.equal([]);
    const refused = { ...late, moves: [move({ status: 'refused' })] };
    expect(checkLiveness(refused, 10_000).held).to.equal(false);
  });

  it('isolation: a VM no fault touched that stalls fails; the same VM stalled by its own fault does not', () => {
    const stallC: Look = (vm, ms) => (vm === 'c' ? { progress: ms < 12_000 ? ms : ms < 17_000 ? 12_000 : ms - 5000 } : vm === 'a' ? pausedLook(vm, ms) : null);
    const c = checkIsolation(obs(record(stallC), [pauseA]), 2000, 10_000);
    expect(c.held).to.equal(false);
    expect(c.evidence).to.have.length(1);
    expect(c.evidence[0]).to.match(/^c \(no fault touched it then\): counter stayed at 12,000 for 4\.8 s, from \+12\.0s to \+16\.8s/);
    const ownFault = fault({ id: 'f4', kind: 'vp-stall', from: 12_000, to: 17_000, vms: ['c'] });
    const ok = checkIsolation(obs(record(stallC), [pauseA, ownFault]), 2000, 10_000);
    expect(ok.held, ok.evidence.join('; ')).to.equal(true);
    // A VM seen Off outside any fault's window is a violation too.
    const off = checkIsolation(obs(record((vm, ms) => (vm === 'b' && ms >= 20_000 && ms < 21_000 ? { state: 'Off', progress: null } : null)), []), 2000, 10_000);
    expect(off.held).to.equal(false);
    expect(off.evidence[0]).to.match(/^b \(no fault touched it then\): Off at \+20\.0s/);
    // Before it was ever seen Running it had not started: a run stopped during its set-up is no violation.
    const early = checkIsolation(obs(record((vm, ms) => (vm === 'b' && ms < 3000 ? { state: 'NotListed', progress: null } : null)), []), 2000, 10_000);
    expect(early.held, early.evidence.join('; ')).to.equal(true);
    const never = checkIsolation(obs(record((vm) => (vm === 'b' ? { state: 'NotListed', progress: null } : null)), []), 2000, 10_000);
    expect(never.held, never.evidence.join('; ')).to.equal(true);
    expect(never.unknown.join('; ')).to.match(/b: never seen running/);
  });

  it('isolation: readings without an answer are unknown, not a stall; a hypervisor pause excuses the host\'s VMs, a root pause does not', () => {
    // h2 did not answer from 12 s to 17 s; its VMs counted on meanwhile.
    const silent: Look = (vm, ms) => (vm !== 'a' && ms >= 12_000 && ms < 17_000 ? { answered: false, state: null, progress: null, heartbeat: null } : null);
    const silentHost = (h: string, ms: number): Partial<HostSample> | null => (h === 'h2' && ms >= 12_000 && ms < 17_000 ? { answered: false, peersMissed: null } : null);
    const rootPause = fault({ id: 'f5', kind: 'pause', from: 12_000, to: 17_000, hosts: ['h2'], procs: [{ role: 'root', host: 'h2', vm: null }], target: 'host:h2' });
    const c = checkIsolation(obs(record(silent, silentHost), [rootPause]), 2000, 1000);
    expect(c.held, c.evidence.join('; ')).to.equal(true);
    expect(c.unknown.some((u) => /^b: no answer from its host from \+12\.0s to \+17\.2s/.test(u))).to.equal(true);
    expect(faultEffect(rootPause, world, T0 + END)).to.deep.include({ vms: [], hosts: ['h2'] });
    // The same silence without the root's fault: the host's management API went unanswered, a violation.
    const noFault = checkIsolation(obs(record(silent, silentHost), []), 2000, 1000);
    expect(noFault.held).to.equal(false);
    expect(noFault.evidence[0]).to.match(/^host h2 \(no fault touched it then\): its management API did not answer for 5\.\d s/);
    // Same counter on both sides of the gap: the VMs did stall; under the root's pause that is a violation (the VMs must run on) …
    const stalled: Look = (vm, ms) => (vm === 'a' ? null : ms >= 12_000 && ms < 17_000 ? { answered: false, state: null, progress: null, heartbeat: null } : ms >= 17_000 ? { progress: Math.max(11_600, ms - 5600) } : null);
    const s = checkIsolation(obs(record(stalled, silentHost), [rootPause]), 2000, 1000);
    expect(s.held).to.equal(false);
    expect(s.evidence.map((e) => e.split(' ')[0])).to.deep.equal(['b', 'c']);
    // … and under a pause of the hypervisor it is the fault's effect.
    const hvPause = fault({ id: 'f6', kind: 'pause', from: 12_000, to: 17_000, hosts: ['h2'], procs: [{ role: 'hypervisor', host: 'h2', vm: null }], target: 'host:h2' });
    expect(faultEffect(hvPause, world, T0 + END)).to.deep.include({ vms: ['b', 'c'], hosts: ['h2'] });
    const h = checkIsolation(obs(record(stalled, silentHost), [hvPause]), 2000, 1000);
    expect(h.held, h.evidence.join('; ')).to.equal(true);
  });

  it('what a fault touched: lp-shrink the host and its VMs, a link or partition no VM, a VM\'s own fault that VM', () => {
    expect(faultEffect(fault({ id: 'x', kind: 'lp-shrink', from: 0, to: 1, hosts: ['h2'] }), world, T0)).to.deep.include({ vms: ['b', 'c'], hosts: ['h2'] });
    expect(faultEffect(fault({ id: 'x', kind: 'partition', from: 0, to: 1, hosts: ['h1', 'h2'], links: [['h2', 'h1']] }), world, T0)).to.deep.include({ vms: [], hosts: [], links: [['h1', 'h2']] });
    expect(faultEffect(fault({ id: 'x', kind: 'vmbus', from: 0, to: 1, vms: ['c'] }), world, T0)).to.deep.include({ vms: ['c'], hosts: [] });
    // A kill of the fabric: every link, and no host or VM of its own.
    expect(faultEffect(fault({ id: 'x', kind: 'kill', from: 0, to: 1, procs: [{ role: 'fabric', host: 'c', vm: null }], links: [['h2', 'h1']] }), world, T0)).to.deep.include({ vms: [], hosts: [], links: [['h1', 'h2']] });
    // A fault still active when the record was taken lasts until its end.
    expect(faultEffect(fault({ id: 'x', kind: 'clock', from: 0, to: null, vms: ['a'] }), world, T0 + 5).to).to.equal(T0 + END);
  });

  it('recovery of a partition or a kill of the fabric: until both hosts hear each other again; not seen is null', () => {
    const cut = fault({ id: 'f7', kind: 'partition', from: 5000, to: 10_000, hosts: ['h1', 'h2'], links: [['h1', 'h2']] });
    const missed = (h: string, ms: number): Partial<HostSample> | null => {
      const peer = h === 'h1' ? 'h2' : 'h1';
      if (ms >= 5000 && ms < (h === 'h1' ? 11_200 : 10_800)) return { peersMissed: { [peer]: 3 } };
      return null;
    };
    const [r] = recoveryTimes(obs(record(undefined, missed), [cut]));
    expect(r).to.include({ recoveredMs: 1200 });
    expect(r!.detail).to.match(/h1 and h2 hearing each other after 1\.2 s/);
    const never = (h: string, ms: number): Partial<HostSample> | null => (ms >= 5000 ? { peersMissed: { [h === 'h1' ? 'h2' : 'h1']: 9 } } : null);
    expect(recoveryTimes(obs(record(undefined, never), [cut]))[0]!.recoveredMs).to.equal(null);
    // A kill of the fabric (for 0: an instant): the hosts miss heartbeats only after it, and its
    // recovery is until they hear each other for good, not their first clean reading after it.
    const fabricKill = fault({ id: 'f8', kind: 'kill', from: 5000, to: 5000, procs: [{ role: 'fabric', host: 'c', vm: null }], links: [['h1', 'h2']], target: 'cluster' });
    const late = (h: string, ms: number): Partial<HostSample> | null => {
      const peer = h === 'h1' ? 'h2' : 'h1';
      if (ms >= 5500 && ms < 7500) return { peersMissed: { [peer]: 2 } };
      if (h === 'h2' && ms >= 7500 && ms < 7700) return { peersMissed: {} };
      return null;
    };
    const [k] = recoveryTimes(obs(record(undefined, late), [fabricKill]));
    expect(k!.affected).to.deep.equal(['link:h1-h2']);
    // Readings every 400 ms: h1 hears h2 again at 7.6 s; h2's table has no h1 at 7.6 s (its book
    // came back without it yet), so h2 hears h1 again at 8.0 s.
    expect(k!.detail).to.equal('h1 and h2 hearing each other after 3.0 s');
    expect(k!.recoveredMs).to.equal(3000);
    // A partition whose window holds that kill is judged from its own end; a fault on the link
    // after that end bounds the window (the link must be back for good before it).
    const around = fault({ id: 'f9', kind: 'partition', from: 4000, to: 9000, hosts: ['h1', 'h2'], links: [['h1', 'h2']] });
    const [p9] = recoveryTimes(obs(record(undefined, late), [around, fabricKill]));
    expect(p9).to.include({ recoveredMs: 200 }); // the first readings after its end (every 400 ms)
    const after = fault({ id: 'f10', kind: 'link', from: 6000, to: 6000, links: [['h1', 'h2']], target: 'link:h1-h2' });
    expect(recoveryTimes(obs(record(undefined, late), [fabricKill, after]))[0]!.recoveredMs, 'the link never back for good before f10').to.equal(null);
    // A fault that failed has no recovery.
    const failed = { ...pauseA, state: 'failed' as const, error: 'pid gone' };
    expect(recoveryTimes(obs(record(), [failed]))[0]).to.include({ recoveredMs: null, detail: 'the fault failed: pid gone' });
  });

  it('memory: the memdirty pattern with one step holds; a flipped bit, a second step or an unwritten guest fails', () => {
    const page = 4096;
    const mk = (): Uint8Array => {
      const b = new Uint8Array(512 * page);
      for (let p = 0; p < 512; p++) b[p * page] = p < 300 ? 7 : 6;
      return b;
    };
    expect(memdirtyCheck(mk())).to.include({ held: true, pages: 512, steps: 1, badCount: 0, dirtied: true });
    const flipped = mk();
    flipped[100 * page] ^= 0x10;
    const v = memdirtyCheck(flipped);
    expect(v).to.include({ held: false, badCount: 2 });
    expect(v.badPages).to.deep.equal([100, 101]);
    expect(v.message).to.match(/page 100 = 23 after 7/);
    const two = mk();
    two[400 * page] = 5;
    for (let p = 401; p < 512; p++) two[p * page] = 5;
    expect(memdirtyCheck(two)).to.include({ held: false, steps: 2 });
    expect(memdirtyCheck(new Uint8Array(64 * page))).to.include({ held: false, dirtied: false });
    // With the guest's count of page writes: mk() is 7 passes begun (6 whole, 300 pages into the 7th).
    expect(memdirtyCheck(mk(), page, 6 * 512 + 300)).to.include({ held: true, firstPageAgrees: true });
    const behind = memdirtyCheck(mk(), page, 7 * 512 + 300);
    expect(behind).to.include({ held: false, firstPageAgrees: false });
    expect(behind.message).to.match(/first page's byte is 7, but the guest counted 3884 page writes: 8 passes/);
    // 256 whole passes: every first byte is 0 again, which is right with the count and wrong without.
    expect(memdirtyCheck(new Uint8Array(64 * page), page, 256 * 64)).to.include({ held: true, dirtied: true });
    expect(memdirtyCheck(new Uint8Array(64 * page), page, 0)).to.include({ held: false, dirtied: false });
    const check = checkMemory([{ vm: 'md', bytes: flipped, error: null }, { vm: 'ok', bytes: mk(), error: null }]);
    expect(check.held).to.equal(false);
    expect(check.evidence).to.have.length(1);
    expect(check.evidence[0]).to.match(/^md: 2 pages break the pattern/);
    const unread = checkMemory([{ vm: 'md', bytes: null, error: 'VM md is Off' }]);
    expect(unread.held).to.equal(false);
    expect(unread.unknown[0]).to.match(/md: its memory could not be read: VM md is Off/);
    expect(checkMemory([])).to.include({ held: true, skipped: true });
  });

  it('cleanup: nothing left holds; a process, a /dev/shm file, a namespace, an active fault or a nemesis left fails, each named', () => {
    const clean: CleanupObservation = {
      hostProcesses: [{ host: 'h1', hostId: 'aaaaaa', pids: [] }], shmFiles: [], network: { namespaces: [], links: [] }, activeFaults: [], nemesisPids: [], fabricPids: [], vmsLeft: null, homeLeft: null, problems: [],
    };
    const c = checkCleanup(clean);
    expect(c.held).to.equal(true);
    expect(c.evidence).to.include('no active fault');
    const dirty = checkCleanup({ ...clean, hostProcesses: [{ host: 'h1', hostId: 'aaaaaa', pids: [4242] }], shmFiles: ['hvlab-aaaaaa-ram'], network: { namespaces: ['hv-x-h1'], links: [] }, activeFaults: [pauseA], nemesisPids: [77], vmsLeft: ['a'] });
    expect(dirty.held).to.equal(false);
    expect(dirty.evidence).to.deep.equal([
      'host h1 (aaaaaa): processes left: 4242', '/dev/shm files left: hvlab-aaaaaa-ram', 'network left: namespaces hv-x-h1; links none', 'faults still active: f1 (pause vm:a)', 'nemesis left running: pid 77', 'VMs of the run left: a',
    ]);
    expect(checkCleanup({ ...clean, activeFaults: 'the nemesis did not answer' }).held).to.equal(false);
  });

  it('longestOutside: the longest piece of a span outside the excused ones', () => {
    expect(longestOutside(0, 10, [])).to.deep.equal([0, 10]);
    expect(longestOutside(0, 10, [[2, 5]])).to.deep.equal([5, 10]);
    expect(longestOutside(0, 10, [[6, 8], [-1, 3]])).to.deep.equal([3, 6]);
    expect(longestOutside(0, 10, [[-5, 20]])).to.equal(null);
  });

  it('the readings of hosts\' answers never throw and take only what they understand (seeded fuzz)', () => {
    expect(vmReading([{ name: 'a', state: 'Running', workload: { name: 'counter', progress: 12 }, memoryBytes: 2097152 }], 'a')).to.deep.equal({ listed: true, state: 'Running', progress: 12, memoryBytes: 2097152 });
    expect(vmReading([{ name: 'a', state: 3, workload: { progress: 'x' }, memoryBytes: 1.5 }], 'a')).to.deep.equal({ listed: true, state: null, progress: null, memoryBytes: null });
    for (const m of [-1, 0, 2 ** 60, '16M', null]) expect(vmReading([{ name: 'a', memoryBytes: m }], 'a').memoryBytes, String(m)).to.equal(null);
    expect(vmReading({ name: 'a' }, 'a')).to.deep.equal({ listed: false, state: null, progress: null, memoryBytes: null });
    expect(heartbeatStatus([{ service: 'kvp', status: 'OK' }, { service: 'heartbeat', status: 'LostCommunication' }])).to.equal('LostCommunication');
    expect(heartbeatStatus([{ service: 'heartbeat', status: '<script>' }])).to.equal(null);
    expect(peersMissed({ cluster: { peers: [{ name: 'h2', missed: 3 }, { name: 'h3', missed: -1 }, null] } })).to.deep.equal({ h2: 3 });
    expect(peersMissed({ cluster: null })).to.equal(null);
    const next = seededRandom(99);
    const junk = (d: number): unknown => {
      const r = next();
      if (d > 3 || r < 0.3) return [null, 1, 'OK', true, NaN, -1, 'heartbeat', 'a', Infinity, {}][Math.floor(next() * 10)];
      if (r < 0.6) return Array.from({ length: Math.floor(next() * 4) }, () => junk(d + 1));
      const o: Record<string, unknown> = {};
      for (const k of ['name', 'state', 'workload', 'progress', 'memoryBytes', 'service', 'status', 'cluster', 'peers', 'missed', '__proto__']) if (next() < 0.4) o[k] = junk(d + 1);
      return o;
    };
    for (let i = 0; i < 2000; i++) {
      const v = junk(0);
      const r = vmReading(v, 'a');
      expect(r.progress === null || Number.isFinite(r.progress)).to.equal(true);
      expect(r.memoryBytes === null || (Number.isSafeInteger(r.memoryBytes) && r.memoryBytes > 0)).to.equal(true);
      const h = heartbeatStatus(v);
      expect(h === null || typeof h === 'string').to.equal(true);
      const p = peersMissed(v);
      expect(p === null || Object.values(p).every((x) => Number.isInteger(x) && x >= 0)).to.equal(true);
    }
  });
});
