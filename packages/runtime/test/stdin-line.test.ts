/**
 * readStdinLine, how secrets and start-up inputs reach hvlab's processes: a line; a stdin closed
 * with nothing written (a spare partition process whose VMWP went away: it ends quietly) told
 * apart from one closed mid-line or overlong (a fault).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..');

function run(input: string | null): Promise<Record<string, unknown>> {
  return new Promise((res, rej) => {
    const c = spawn(process.execPath, ['--conditions=hvlab-source', '--import', 'tsx', join(here, 'fixtures', 'stdin-line.ts')], { cwd: repo, stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
    c.on('error', rej);
    // 'close': stdout has ended too ('exit' may come before its last bytes).
    c.on('close', () => {
      try {
        res(JSON.parse(out.trim()) as Record<string, unknown>);
      } catch {
        rej(new Error(`no JSON line from the fixture: ${JSON.stringify(out)}`));
      }
    });
    if (input !== null) c.stdin.write(input);
    c.stdin.end();
  });
}

describe('readStdinLine', () => {
  it('returns the first line', async () => {
    expect(await run('hello\nrest')).to.deep.equal({ line: 'hello' });
  });

  it('says stdin ended (StdinEndedError) when it closes with nothing written', async () => {
    const r = await run(null);
    expect(r.ended).to.equal(true);
    expect(r.message).to.equal('stdin closed before the test line arrived');
  });

  it('calls a line cut short or too long a fault, not an end', async () => {
    for (const input of ['no newline', 'x'.repeat(200)]) {
      const r = await run(input);
      expect(r.ended, input.slice(0, 12)).to.equal(false);
      expect(r.message).to.equal('the test line did not arrive on stdin');
    }
  });
});
