/**
 * The first line of a daemon's stdout (child-line.ts): what hvlab's starters read to know whether
 * the hypervisor, a fabric or a nemesis is ready. Bounded, never thrown at, and the line that came
 * just before the child's exit is not lost.
 */
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { seededRandom } from '@hvlab/protocol';
import { FirstLineReader, firstLine, lineText } from '../src/index.js';

const node = (code: string) => spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'ignore'] });

describe('the first line of a child process', () => {
  it('reads a line however it is split, and only the first', () => {
    const r = new FirstLineReader(64);
    expect(r.push(Buffer.from('rea'))).to.equal(null);
    expect(r.push(Buffer.from('dy\nmore\n'))).to.deep.equal({ line: 'ready' });
    expect(new FirstLineReader(64).push(Buffer.from('ready\r\n'))).to.deep.equal({ line: 'ready' });
  });

  it('answers a line past the limit as too long, and shows control characters as escapes', () => {
    const r = new FirstLineReader(8);
    expect(r.push(Buffer.from('12345'))).to.equal(null);
    expect(r.push(Buffer.from('6789'))).to.equal('too-long');
    expect(new FirstLineReader(8).push(Buffer.from('12345678\n'))).to.deep.equal({ line: '12345678' });
    expect(lineText(Buffer.from('failed \x1b[31mred\x07 \xff'.split('').map((c) => c.charCodeAt(0))))).to.equal('failed \\x1b[31mred\\x07 \ufffd');
  });

  it('never throws on random chunks, and a line it gives is bounded and has no control characters (seeded fuzz)', () => {
    const next = seededRandom(0x11e5);
    let lines = 0;
    for (let i = 0; i < 3000; i++) {
      const r = new FirstLineReader(256);
      for (let c = 0; c < 20; c++) {
        const chunk = new Uint8Array(Math.floor(next() * 64));
        for (let k = 0; k < chunk.length; k++) chunk[k] = next() < 0.02 ? 0x0a : Math.floor(next() * 256);
        const got = r.push(chunk);
        if (got === null) continue;
        if (got !== 'too-long') {
          lines++;
          expect(Buffer.byteLength(got.line)).to.be.at.most(4 * 256);
          expect(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/.test(got.line)).to.equal(false);
        }
        break;
      }
    }
    expect(lines).to.be.greaterThan(100);
  });

  it('gives a child\'s ready line, and its line when it exits right after writing it', async () => {
    expect(await firstLine(node('process.stdout.write("ready\\n"); setTimeout(() => {}, 200)'), 10000)).to.deep.equal({ kind: 'line', line: 'ready' });
    const r = await firstLine(node('process.stdout.write("locked 1234"); process.exit(3)'), 10000);
    expect(r).to.deep.equal({ kind: 'exited', why: 'exit code 3', partial: 'locked 1234' });
  });

  it('says when a child says nothing in time or too much without a newline, and keeps no listener', async () => {
    const quiet = node('setTimeout(() => {}, 30000)');
    try {
      expect(await firstLine(quiet, 150)).to.deep.equal({ kind: 'timeout' });
      expect(quiet.stdout!.listenerCount('data')).to.equal(0);
      expect(quiet.listenerCount('exit')).to.equal(0);
    } finally {
      quiet.kill('SIGKILL');
    }
    const loud = node('process.stdout.write("x".repeat(100000)); setTimeout(() => {}, 30000)');
    try {
      expect(await firstLine(loud, 10000)).to.deep.equal({ kind: 'too-long' });
    } finally {
      loud.kill('SIGKILL');
    }
  });

  it('stops waiting when its signal is aborted (a Ctrl-C of the starter), before or while it waits, and keeps no listener', async () => {
    const quiet = node('setTimeout(() => {}, 30000)');
    try {
      const ac = new AbortController();
      const waiting = firstLine(quiet, 30000, undefined, ac.signal);
      ac.abort();
      expect(await waiting).to.deep.equal({ kind: 'aborted' });
      expect(quiet.stdout!.listenerCount('data')).to.equal(0);
      expect(quiet.listenerCount('exit')).to.equal(0);
      expect(await firstLine(quiet, 30000, undefined, ac.signal), 'aborted already').to.deep.equal({ kind: 'aborted' });
      // A signal never aborted changes nothing, and its listener goes with the line.
      const calm = new AbortController();
      const ready = node('process.stdout.write("ready\\n"); setTimeout(() => {}, 200)');
      expect(await firstLine(ready, 10000, undefined, calm.signal)).to.deep.equal({ kind: 'line', line: 'ready' });
    } finally {
      quiet.kill('SIGKILL');
    }
  });
});
