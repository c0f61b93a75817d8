/**
 * The namespace probe's leftovers: a CLI killed between the probe's `ip netns add` and `del` left
 * a namespace named for no cluster. The names and subnets a cluster's network gets, and whose
 * objects a teardown removes (only its own home's, whatever the names). Those that make network
 * objects are skipped where this machine allows no namespaces.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { MAX_HOSTS } from '../src/topology.js';
import {
  clusterTag, namespacesAvailable, NetworkError, networkLeftovers, networkOwner, ownedNetwork, pickSubnet, planNetwork, setupNetwork, subnetBase, sweepStaleProbes, teardownNetwork, type ClusterNetwork,
} from '../src/netns.js';

const netnsList = (): string[] => (spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '').split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);

describe('namespace probe leftovers', function () {
  before(function () {
    if (!namespacesAvailable().ok) this.skip();
  });

  it('are removed when their process is gone, and a live process\'s probe is left alone', () => {
    // A pid that is gone: a child that has exited and been reaped.
    const dead = spawnSync('true').pid!;
    const stale = `hvlab-probe-${dead}`;
    const live = `hvlab-probe-${process.ppid}`;
    expect(spawnSync('ip', ['netns', 'add', stale]).status).to.equal(0);
    expect(spawnSync('ip', ['netns', 'add', live]).status).to.equal(0);
    try {
      // Counted by whoever removed it: a `cluster up` of the end-to-end tests, run beside these, sweeps too.
      expect(sweepStaleProbes()).to.be.a('number');
      expect(netnsList()).to.not.include(stale);
      expect(netnsList(), 'its process lives').to.include(live);
    } finally {
      spawnSync('ip', ['netns', 'del', stale]);
      spawnSync('ip', ['netns', 'del', live]);
    }
  });
});

describe('a cluster network\'s names and subnet', () => {
  it('fit Linux\'s limits: interface names of at most 15 bytes for the most hosts a topology has, namespaces named for 10-character hosts', () => {
    const hosts = Array.from({ length: MAX_HOSTS }, (_, i) => `h${i}`.padEnd(10, 'x'));
    const net = planNetwork('/some/home', hosts, 'namespaces', 'test');
    expect(net.tag).to.match(/^[0-9a-f]{8}$/);
    expect(net.tag).to.equal(clusterTag('/some/home'));
    const ifnames = [net.bridge!, ...hosts.flatMap((_, i) => [`hv${net.tag}-${i}`, `hvp${net.tag}-${i}`])];
    for (const n of ifnames) expect(Buffer.byteLength(n), n).to.be.at.most(15);
    for (const h of net.hosts) expect(h.netns).to.equal(`hvlab-${net.tag}-${h.name}`);
    expect(new Set(net.hosts.map((h) => h.address)).size).to.equal(MAX_HOSTS);
  });

  it('is the tag\'s own subnet when free, the next free one when not, and a sentence when none is', () => {
    const tag = '0000ffff';
    const own = pickSubnet(tag, 'namespaces', () => false);
    expect(subnetBase('namespaces', own)).to.not.equal(null);
    expect(pickSubnet(tag, 'namespaces', () => false)).to.equal(own);
    const ownBase = subnetBase('namespaces', own)!;
    const next = pickSubnet(tag, 'namespaces', (b) => b === ownBase);
    expect(next).to.not.equal(own);
    expect(subnetBase('namespaces', next)).to.not.equal(null);
    // Tags that land on one subnet: the second, seeing it used, gets another.
    const lo = pickSubnet(tag, 'loopback', () => false);
    expect(lo).to.match(/^127\.1\d\d\.\d+\.0\/24$/);
    expect(() => pickSubnet(tag, 'namespaces', () => true)).to.throw(NetworkError, /^every subnet a cluster may have \(10\.200\.0\.0 to 10\.249\.255\.0, \/24 each\) is in use on this machine; take a cluster down, or remove what holds them$/);
    // A recorded subnet is one hvlab gives, or none.
    for (const bad of ['10.250.0.0/24', '10.200.0.0/16', '10.200.01.0/24', '127.100.0.0/24', 7, null]) expect(subnetBase('namespaces', bad), String(bad)).to.equal(null);
  });
});

describe('whose network objects a teardown removes', function () {
  this.timeout(60000);
  const nets: ClusterNetwork[] = [];
  before(function () {
    if (!namespacesAvailable().ok) this.skip();
  });
  afterEach(() => {
    for (const n of nets.splice(0)) teardownNetwork(n);
  });
  const present = (net: ClusterNetwork): string[] => {
    const left = networkLeftovers(net.tag);
    return [...left.namespaces, ...left.links].sort();
  };

  it('never another home\'s, even named for the same tag; and a setup on names that are taken makes nothing and touches nothing', () => {
    // Two homes whose networks are named alike (as two homes whose tags collide would be), on subnets of their own.
    const a = planNetwork('/tmp/netns-test-home-a', ['h1', 'h2'], 'namespaces', 'test');
    const b = planNetwork('/tmp/netns-test-home-b', ['h1', 'h2'], 'namespaces', 'test', { tag: a.tag, subnet: pickSubnet(a.tag, 'namespaces', (x) => `${x}.0/24` === a.subnet), instance: 'bbbbbbbbbbbb' });
    expect(networkLeftovers(a.tag), 'names free before').to.deep.equal({ namespaces: [], links: [] });
    nets.push(a);
    setupNetwork(a);
    const made = present(a);
    expect(made).to.deep.equal([`hv${a.tag}-0`, `hv${a.tag}-1`, `hvbr-${a.tag}`, `hvlab-${a.tag}-h1`, `hvlab-${a.tag}-h2`].sort());
    expect([...ownedNetwork(a).namespaces, ...ownedNetwork(a).links].sort()).to.deep.equal(made);
    // The other home's teardown, even by the same tag, takes none of it.
    expect(ownedNetwork(b)).to.deep.equal({ namespaces: [], links: [] });
    expect(teardownNetwork(b)).to.equal(0);
    expect(teardownNetwork({ owner: networkOwner('/tmp/netns-test-home-b') })).to.equal(0);
    expect(present(a)).to.deep.equal(made);
    // Its setup on the names a has: refused as a sentence, nothing made, nothing of a's touched.
    expect(() => setupNetwork(b)).to.throw(NetworkError, /^a network object named for tag [0-9a-f]{8} exists on this machine already \(another cluster's, made meanwhile\): nothing of it was touched; run the command again$/);
    expect(present(a)).to.deep.equal(made);
    // Another instance of a's own home: only its instance's when asked so, all of the home's when not.
    expect(teardownNetwork({ owner: a.owner, instance: 'cccccccccccc' })).to.equal(0);
    expect(present(a)).to.deep.equal(made);
    expect(teardownNetwork({ owner: a.owner })).to.equal(5);
    expect(present(a)).to.deep.equal([]);
  });
});
