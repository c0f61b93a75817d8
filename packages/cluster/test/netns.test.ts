/**
 * The namespace probe's leftovers: a CLI killed between the probe's `ip netns add` and `del` left
 * a namespace named for no cluster. Skipped where this machine allows no namespaces.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { namespacesAvailable, sweepStaleProbes } from '../src/netns.js';

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
      expect(sweepStaleProbes()).to.be.at.least(1);
      expect(netnsList()).to.not.include(stale);
      expect(netnsList(), 'its process lives').to.include(live);
    } finally {
      spawnSync('ip', ['netns', 'del', stale]);
      spawnSync('ip', ['netns', 'del', live]);
    }
  });
});
