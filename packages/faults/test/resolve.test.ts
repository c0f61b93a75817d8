/**
 * Resolving targets (resolve.ts) against a world without processes: selectors draw the same
 * members from the same seed; each partition shape cuts what Jepsen's nemesis of that name cuts;
 * a target that is not there is a sentence.
 */
import { expect } from 'chai';
import { hostPaths } from '@hvlab/runtime';
import type { VmMigration } from '@hvlab/protocol';
import { checkFaultRequest, markMoves, parseTarget, partitionCuts, pick, resolveTarget, ResolveError, selectCount, vmCopies, type World } from '../src/index.js';

const hosts = ['h1', 'h2', 'h3', 'h4', 'h5'];
const mesh = (names: string[]): Array<[string, string]> => names.flatMap((a, i) => names.slice(i + 1).map((b) => [a, b] as [string, string]));
const link = (a: string, b: string) => ({ a, b, cut: false, seed: 1, bytes: [0, 0] as [number, number], lost: 0, connections: 0 });

function world(): World {
  return {
    cluster: 'c', hosts: hosts.slice(0, 3).map((n, i) => ({ name: n, hostId: `id${i}`, paths: hostPaths(`/tmp/x/${n}`) })),
    processes: [
      { hostId: 'id0', role: 'hypervisor', vm: null, pid: 100, start: 1 }, { hostId: 'id0', role: 'root', vm: null, pid: 101, start: 1 },
      { hostId: 'id0', role: 'vmwp', vm: 'web', pid: 102, start: 1 }, { hostId: 'id0', role: 'partition', vm: 'web', pid: 103, start: 1 },
      { hostId: 'id1', role: 'root', vm: null, pid: 201, start: 1 }, { hostId: 'id1', role: 'vmwp', vm: 'db', pid: 202, start: 1 },
      { hostId: 'id1', role: 'partition', vm: 'db', pid: 203, start: 1 },
    ],
    vms: [{ host: 'h2', vm: 'db' }, { host: 'h1', vm: 'web' }],
    links: mesh(['h1', 'h2', 'h3']).map(([a, b]) => link(a, b)),
  };
}
const t = (s: string) => {
  const r = parseTarget(s);
  if (!r.ok) throw new Error(r.message);
  return r.value;
};

describe('resolving fault targets', () => {
  it('selectors take one, a minority, a majority or all, the same members for the same seed', () => {
    expect([1, 2, 3, 4, 5].map((n) => selectCount('minority', n))).to.deep.equal([1, 1, 1, 1, 2]);
    expect([1, 2, 3, 4, 5].map((n) => selectCount('majority', n))).to.deep.equal([1, 2, 2, 3, 3]);
    expect(pick(hosts, 'majority', 7)).to.deep.equal(pick([...hosts].reverse(), 'majority', 7));
    const seen = new Set<string>();
    for (let s = 0; s < 40; s++) seen.add(pick(hosts, 'one', s).join());
    expect(seen.size, 'different seeds pick different members').to.be.greaterThan(2);
  });

  it('partition shapes cut what they should, and only links the cluster has', () => {
    const all = mesh(hosts);
    const one = partitionCuts('one', hosts, all, 1);
    expect(one.groups.map((g) => g.length).sort()).to.deep.equal([1, 4]);
    expect(one.cuts).to.have.length(4);
    const maj = partitionCuts('majority', hosts, all, 1);
    expect(maj.groups.map((g) => g.length).sort()).to.deep.equal([2, 3]);
    expect(maj.cuts).to.have.length(6);
    const third = partitionCuts('minority-third', hosts, all, 1);
    expect(third.groups.map((g) => g.length).sort()).to.deep.equal([1, 4]);
    // Ring: every host keeps exactly 2 of its 4 links (reaches a majority of 3 with itself), and no two hosts see the same majority.
    const ring = partitionCuts('ring', hosts, all, 1);
    expect(ring.cuts).to.have.length(5);
    for (const h of hosts) expect(all.filter(([a, b]) => (a === h || b === h) && !ring.cuts.some(([x, y]) => x === a && y === b))).to.have.length(2);
    expect(new Set(ring.groups.map((g) => g.join())).size).to.equal(5);
    // Bridge: the bridge host keeps every link; the two halves lose theirs to each other.
    const br = partitionCuts('bridge', hosts, all, 1);
    const bridge = br.groups[0]!.filter((h) => br.groups[1]!.includes(h));
    expect(bridge).to.have.length(1);
    expect(br.cuts.some(([a, b]) => a === bridge[0] || b === bridge[0])).to.equal(false);
    expect(br.cuts).to.have.length(4);
    // Only existing links: a chain h1-h2-h3 cut at one.
    expect(partitionCuts('one', ['h1', 'h2', 'h3'], [['h1', 'h2'], ['h2', 'h3']], 5).cuts.length).to.be.within(1, 2);
    expect(() => partitionCuts('ring', ['h1', 'h2', 'h3'], mesh(['h1', 'h2', 'h3']), 1)).to.throw(ResolveError, /at least 4 hosts/);
    expect(partitionCuts('majority', hosts, all, 9)).to.deep.equal(partitionCuts('majority', hosts, all, 9));
  });

  it('finds the processes, VMs and links a target means', () => {
    const w = world();
    expect(resolveTarget(w, 'pause', t('vm:web'), null, 1, {}).processes).to.deep.equal([{ host: 'h1', role: 'partition', vm: 'web', pid: 103 }]);
    expect(resolveTarget(w, 'kill', t('vm:db'), 'vmwp', 1, {}).processes).to.deep.equal([{ host: 'h2', role: 'vmwp', vm: 'db', pid: 202 }]);
    const root = resolveTarget(w, 'pause', t('host-of:web'), null, 1, {});
    expect(root.processes).to.deep.equal([{ host: 'h1', role: 'root', vm: null, pid: 101 }]);
    expect(root.vms).to.deep.equal([{ host: 'h1', vm: 'web' }]);
    expect(resolveTarget(w, 'pause', t('vm:web'), 'hypervisor', 1, {}).processes[0]!.pid).to.equal(100);
    expect(resolveTarget(w, 'vmbus', t('vms:all'), null, 1, {}).vms.map((v) => v.vm)).to.deep.equal(['db', 'web']);
    expect(resolveTarget(w, 'link', t('link:h2-h1'), null, 1, {}).links).to.deep.equal([['h1', 'h2']]);
    // Dashed names: the split the cluster has a link for.
    const w2: World = { ...w, hosts: [...w.hosts, { name: 'my-h1', hostId: 'id9', paths: hostPaths('/tmp/x/my') }], links: [...w.links, link('my-h1', 'h2')] };
    expect(resolveTarget(w2, 'link', t('link:my-h1-h2'), null, 1, {}).links).to.deep.equal([['my-h1', 'h2']]);
    expect(resolveTarget(w, 'partition', t('cluster'), null, 1, { shape: 'one' }).links).to.have.length(2);
    expect(() => resolveTarget(w, 'pause', t('vm:nope'), null, 1, {})).to.throw(ResolveError, /VM nope is not running on any host \(running: db, web\)/);
    expect(() => resolveTarget(w, 'pause', t('host:h9'), null, 1, {})).to.throw(ResolveError, /no host h9/);
    expect(() => resolveTarget(w, 'pause', t('host:h3'), null, 1, {})).to.throw(ResolveError, /host h3 has no root process/);
    expect(() => resolveTarget(w, 'link', t('link:h1-h9'), null, 1, {})).to.throw(ResolveError, /no host h9/);
  });

  it('a kill or pause of the cluster hits its fabric\'s server and every link; the fabric role takes no other target, and the cluster no other role', () => {
    const w = world();
    expect(() => resolveTarget(w, 'kill', t('cluster'), null, 1, {})).to.throw(ResolveError, /cluster c has no fabric process running/);
    w.processes.push({ hostId: '', role: 'fabric', vm: null, pid: 900, start: 1 });
    for (const kind of ['kill', 'pause']) {
      const r = resolveTarget(w, kind, t('cluster'), kind === 'kill' ? 'fabric' : null, 1, {});
      expect(r.processes).to.deep.equal([{ host: 'c', role: 'fabric', vm: null, pid: 900 }]);
      expect(r.links).to.deep.equal([['h1', 'h2'], ['h1', 'h3'], ['h2', 'h3']]);
      expect(r.vms).to.deep.equal([]);
      expect(r.hosts).to.deep.equal([]);
      expect(r.summary).to.equal('the fabric of cluster c (pid 900): links h1-h2, h1-h3, h2-h3');
    }
    // A host's role never resolves to the fabric, nor the fabric's to a host.
    expect(resolveTarget(w, 'pause', t('host:h1'), null, 1, {}).processes[0]!.role).to.equal('root');
    const req = (target: string, role: string | undefined) => checkFaultRequest({ kind: 'kill', target, forMs: 1000, ...(role ? { role } : {}) });
    expect(req('cluster', 'fabric').ok).to.equal(true);
    expect(req('cluster', undefined).ok).to.equal(true);
    const refusedRole = req('cluster', 'root');
    expect(!refusedRole.ok && refusedRole.message).to.match(/role root belongs to a host or a VM: a kill fault on the cluster hits its fabric \(--role fabric\)/);
    const refusedTarget = req('host:h1', 'fabric');
    expect(!refusedTarget.ok && refusedTarget.message).to.match(/the fabric is the cluster's: target cluster/);
  });

  it('refuses to pick one of two VMs of one name on two hosts, and a selector takes every copy', () => {
    const w = world();
    w.vms.push({ host: 'h1', vm: 'db' });
    w.processes.push({ hostId: 'id0', role: 'partition', vm: 'db', pid: 104, start: 1 });
    expect(() => resolveTarget(w, 'pause', t('vm:db'), null, 1, {})).to.throw(ResolveError, /VM db runs on more than one host \(h1, h2\): aim at one with vm:db@HOST, or --host/);
    expect(resolveTarget(w, 'pause', t('vm:db@h2'), null, 1, {}).vms).to.deep.equal([{ host: 'h2', vm: 'db' }]);
    expect(() => resolveTarget(w, 'pause', t('vm:db@h9'), null, 1, {})).to.throw(ResolveError, /there is no host h9/);
    expect(() => resolveTarget(w, 'pause', t('host-of:db'), null, 1, {})).to.throw(ResolveError, /more than one host/);
    expect(resolveTarget(w, 'vmbus', t('vms:all'), null, 1, {}).vms).to.deep.equal([{ host: 'h1', vm: 'db' }, { host: 'h2', vm: 'db' }, { host: 'h1', vm: 'web' }]);
    // Roots that say neither copy is a move's: still two VMs.
    markMoves(w, new Map([['h1|db', null], ['h2|db', null]]));
    expect(() => resolveTarget(w, 'pause', t('vm:db'), null, 1, {})).to.throw(ResolveError, /VM db runs on more than one host \(h1, h2\)/);
  });

  it('aims at a moving VM\'s source copy: the destination\'s incoming copy is the source\'s until the commit', () => {
    // web moves from h1 to h2: h2 runs its incoming copy (a worker and a partition process) too.
    const moving = (): World => {
      const w = world();
      w.vms.push({ host: 'h2', vm: 'web' });
      w.processes.push({ hostId: 'id1', role: 'vmwp', vm: 'web', pid: 204, start: 1 }, { hostId: 'id1', role: 'partition', vm: 'web', pid: 205, start: 1 });
      return w;
    };
    // Unmarked (no root said anything): refused as before.
    expect(() => resolveTarget(moving(), 'pause', t('vm:web'), null, 1, {})).to.throw(ResolveError, /VM web runs on more than one host \(h1, h2\)/);
    // The destination's root says its copy is incoming from h1; the source's may say it goes to h2, or not answer.
    const cases: Array<Array<[string, VmMigration]>> = [
      [['h2|web', { direction: 'incoming', from: 'h1' }], ['h1|web', { direction: 'outgoing', to: 'h2' }]],
      [['h2|web', { direction: 'incoming', from: 'h1' }]],
      // The destination's root did not answer (paused): the source's says where its copy goes.
      [['h1|web', { direction: 'outgoing', to: 'h2' }]],
    ];
    for (const marks of cases) {
      const w = moving();
      markMoves(w, new Map(marks));
      expect(vmCopies(w, 'web').map((v) => v.host), JSON.stringify(marks)).to.deep.equal(['h1']);
      const pause = resolveTarget(w, 'pause', t('vm:web'), null, 1, {});
      expect(pause.processes).to.deep.equal([{ host: 'h1', role: 'partition', vm: 'web', pid: 103 }]);
      expect(pause.vms).to.deep.equal([{ host: 'h1', vm: 'web' }]);
      const vmbus = resolveTarget(w, 'vmbus', t('vm:web'), null, 1, {});
      expect(vmbus.vms).to.deep.equal([{ host: 'h1', vm: 'web' }]);
      expect(vmbus.summary).to.equal('VM web on h1');
      expect(resolveTarget(w, 'pause', t('host-of:web'), null, 1, {}).processes).to.deep.equal([{ host: 'h1', role: 'root', vm: null, pid: 101 }]);
      // A selector takes the moving VM once, at its source.
      expect(resolveTarget(w, 'vmbus', t('vms:all'), null, 1, {}).vms).to.deep.equal([{ host: 'h2', vm: 'db' }, { host: 'h1', vm: 'web' }]);
      // A host fault still touches every VM its host runs, the incoming copy too (plain host and VM names in the record).
      expect(resolveTarget(w, 'pause', t('host:h2'), null, 1, {}).vms).to.deep.equal([{ host: 'h2', vm: 'db' }, { host: 'h2', vm: 'web' }]);
    }
    // After post-copy's switch-over the guest runs at the destination: the source's frozen copy is
    // set aside instead, on either root's word (a pause aimed there stopped the copy that serves
    // the pages, not the VM).
    const switched: Array<Array<[string, VmMigration]>> = [
      [['h2|web', { direction: 'incoming', from: 'h1', switched: true }], ['h1|web', { direction: 'outgoing', to: 'h2', switched: true }]],
      [['h2|web', { direction: 'incoming', from: 'h1', switched: true }], ['h1|web', { direction: 'outgoing', to: 'h2' }]],
      [['h2|web', { direction: 'incoming', from: 'h1', switched: true }]],
      [['h2|web', { direction: 'incoming', from: 'h1' }], ['h1|web', { direction: 'outgoing', to: 'h2', switched: true }]],
      [['h1|web', { direction: 'outgoing', to: 'h2', switched: true }]],
    ];
    for (const marks of switched) {
      const w = moving();
      markMoves(w, new Map(marks));
      expect(vmCopies(w, 'web').map((v) => v.host), JSON.stringify(marks)).to.deep.equal(['h2']);
      expect(resolveTarget(w, 'vmbus', t('vm:web'), null, 1, {}).summary).to.equal('VM web on h2');
    }
    // An incoming copy whose source no longer runs it (the source's copy is gone): the only copy.
    const alone = world();
    alone.vms.push({ host: 'h3', vm: 'solo', migration: { direction: 'incoming', from: 'h1' } });
    alone.processes.push({ hostId: 'id2', role: 'vmwp', vm: 'solo', pid: 301, start: 1 });
    expect(resolveTarget(alone, 'kill', t('vm:solo'), 'vmwp', 1, {}).processes).to.deep.equal([{ host: 'h3', role: 'vmwp', vm: 'solo', pid: 301 }]);
    // The destination committed (its copy no longer incoming) while the source's worker has not
    // left yet: not guessed, refused as two copies.
    const committed = moving();
    markMoves(committed, new Map([['h2|web', null], ['h1|web', { direction: 'outgoing', to: 'h2' }]]));
    expect(() => resolveTarget(committed, 'pause', t('vm:web'), null, 1, {})).to.throw(ResolveError, /VM web runs on more than one host \(h1, h2\)/);
    // A genuine duplicate beside a move: web runs on h1 and (another VM) on h3, and h1's moves to
    // h2. The incoming copy is set aside; h1's and h3's are two VMs, refused.
    const dup = moving();
    dup.vms.push({ host: 'h3', vm: 'web' });
    markMoves(dup, new Map([['h2|web', { direction: 'incoming', from: 'h1' }], ['h1|web', { direction: 'outgoing', to: 'h2' }], ['h3|web', null]]));
    expect(vmCopies(dup, 'web').map((v) => v.host)).to.deep.equal(['h1', 'h3']);
    expect(() => resolveTarget(dup, 'pause', t('vm:web'), null, 1, {})).to.throw(ResolveError, /VM web runs on more than one host \(h1, h3\)/);
    // A copy whose root did not answer is said so.
    const mute = moving();
    mute.vms.push({ host: 'h3', vm: 'web' });
    markMoves(mute, new Map([['h2|web', { direction: 'incoming', from: 'h1' }], ['h1|web', { direction: 'outgoing', to: 'h2' }]]));
    expect(() => resolveTarget(mute, 'pause', t('vm:web'), null, 1, {})).to.throw(ResolveError, /\(h1, h3\).*the root of h3 did not say whether its copy is a live migration's/);
    // An incoming copy that names a host without a copy is not set aside for another's.
    const stray = moving();
    markMoves(stray, new Map([['h2|web', { direction: 'incoming', from: 'h3' }]]));
    expect(() => resolveTarget(stray, 'pause', t('vm:web'), null, 1, {})).to.throw(ResolveError, /more than one host \(h1, h2\)/);
  });
});
