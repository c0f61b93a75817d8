/**
 * The partition process's first spare VP thread (spare.ts): its entry waits for the thread to have
 * loaded before it turns eager compilation on (runtime/src/paths.ts, eagerCompileAfter, says why).
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

function run(mode: string): unknown {
  const fixture = fileURLToPath(new URL('./fixtures/first-vp-thread.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', fixture, mode], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(r.error, 'the process ended by itself').to.equal(undefined);
  expect(r.status, r.stderr).to.equal(0);
  return JSON.parse(r.stdout);
}

describe('spare VP threads: the first one', () => {
  it('the wait keeps the process alive, ends once the thread has loaded, and leaves a spare that holds nothing', () => {
    expect(run('spare')).to.deep.equal({ mode: 'spare', first: true, second: false });
  });

  it('a thread taken before it loaded stays held by its taker when the wait ends', () => {
    expect(run('taken')).to.deep.equal({ mode: 'taken', loadedAtEnd: true, held: true });
  });
});
