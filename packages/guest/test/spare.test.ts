/**
 * The partition process's first spare VP thread (spare.ts): its entry waits for the thread to have
 * started before it turns eager compilation on (runtime/src/paths.ts, eagerCompileAfter, says why).
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

describe('spare VP threads: the first one', () => {
  it('resolves once the thread runs, keeps the process alive meanwhile, and lets it end afterwards', () => {
    const fixture = fileURLToPath(new URL('./fixtures/first-vp-thread.ts', import.meta.url));
    const r = spawnSync(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', fixture], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.error, 'the process ended by itself').to.equal(undefined);
    expect(r.status, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.deep.equal({ thread: true, onlineAtEnd: true, second: false });
  });
});
