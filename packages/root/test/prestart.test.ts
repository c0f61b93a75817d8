/**
 * Which partition processes compile their code eagerly: only one started ahead of need (by a
 * spare or warm worker); a replacement on a start's path compiles lazily, whatever its worker's
 * environment holds (runtime/src/paths.ts, eagerCompile, says why).
 */
import { expect } from 'chai';
import { EAGER_COMPILE_ENV } from '@hvlab/runtime/paths';
import { aheadOfNeed, partitionEnv } from '../src/vmwp/prestart.js';

describe('a partition process started ahead of need', () => {
  it('gets HVLAB_EAGER_COMPILE only when started ahead, and keeps the rest of its worker\'s environment', () => {
    const spareWorker = { PATH: '/bin', HVLAB_HOME: '/h', [EAGER_COMPILE_ENV]: '1' };
    const ahead = partitionEnv(spareWorker, true);
    expect(ahead[EAGER_COMPILE_ENV]).to.equal('1');
    expect(ahead.HVLAB_HOME).to.equal('/h');
    expect(ahead.MALLOC_ARENA_MAX, 'the VM processes\' malloc arenas').to.equal('2');
    // A replacement started by the same (claimed) worker on a start's path.
    const replacement = partitionEnv(spareWorker, false);
    expect(replacement).to.not.have.property(EAGER_COMPILE_ENV);
    expect(replacement.PATH).to.equal('/bin');
    expect(partitionEnv({ PATH: '/bin' }, false)).to.not.have.property(EAGER_COMPILE_ENV);
    expect(spareWorker[EAGER_COMPILE_ENV], 'the worker\'s own environment is left as it was').to.equal('1');
  });

  it('a worker is ahead of need only when its root said so with exactly "1"', () => {
    expect(aheadOfNeed({ [EAGER_COMPILE_ENV]: '1' })).to.equal(true);
    for (const v of ['', '0', 'true', undefined]) expect(aheadOfNeed({ [EAGER_COMPILE_ENV]: v }), String(v)).to.equal(false);
    expect(aheadOfNeed({})).to.equal(false);
  });
});
