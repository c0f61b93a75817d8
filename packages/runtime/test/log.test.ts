/**
 * Unit tests of the process loggers (`processLogger`, `LogFile`): a log write never throws or ends
 * the process — not on a full disk (/dev/full answers every write with ENOSPC), not on an I/O
 * error, not when the log directory cannot be made — lines are dropped and counted instead, and
 * once writing works again one line says how many were dropped and why. The file stays JSON
 * lines with the process's bindings on every line, even after a partial write.
 */
import { expect } from 'chai';
import { closeSync, existsSync, fstatSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { movableProcessLogger, nodeLogIo, processLogger, type LogIo } from '../src/log.js';

const BINDINGS = { host: 'h0', role: 'root', partition: 1 };

function ioError(code: string, text: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${text}, write`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

/** Real files, with a switch that makes writes fail (whole, or after `partial` bytes of a write). */
class SwitchableIo implements LogIo {
  failing: { code: string; text: string; partial?: number } | null = null;
  writes = 0;
  open(path: string): number {
    return openSync(path, 'a');
  }
  write(fd: number, buf: Uint8Array, off: number, len: number): number {
    this.writes++;
    const f = this.failing;
    if (f) {
      if (f.partial !== undefined && f.partial > 0) {
        const n = writeSync(fd, buf, off, Math.min(len, f.partial));
        f.partial = 0;
        return n;
      }
      throw ioError(f.code, f.text);
    }
    return writeSync(fd, buf, off, len);
  }
  size(fd: number): number {
    return fstatSync(fd).size;
  }
  truncate(fd: number, len: number): void {
    ftruncateSync(fd, len);
  }
  close(fd: number): void {
    closeSync(fd);
  }
  mkdir(dir: string): void {
    mkdirSync(dir, { recursive: true });
  }
}

function lines(file: string): Array<Record<string, unknown>> {
  const text = readFileSync(file, 'utf8');
  expect(text.endsWith('\n'), 'the file ends with a whole line').to.equal(true);
  return text.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('process logger', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hvlab-log-test-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes JSON lines that carry the process bindings', () => {
    const log = processLogger(dir, 'root.log', BINDINGS);
    log.info({ vm: 'a' }, 'one');
    log.warn('two');
    const ls = lines(join(dir, 'root.log'));
    expect(ls.map((l) => l.msg)).to.deep.equal(['one', 'two']);
    for (const l of ls) expect(l).to.include({ host: 'h0', role: 'root', partition: 1, pid: process.pid });
    expect(ls[0].vm).to.equal('a');
  });

  it('keeps each line\'s own fields to that line (the bindings come from a mixin that pino merges into)', () => {
    const log = processLogger(dir, 'root.log', BINDINGS);
    log.info({ a: 1 }, 'one');
    log.info({ b: 2 }, 'two');
    log.info('three');
    const ls = lines(join(dir, 'root.log'));
    expect(ls[1]).to.not.have.property('a');
    expect(ls[2]).to.not.have.property('a');
    expect(ls[2]).to.not.have.property('b');
  });

  it('a movable logger moves to another file with other bindings, child loggers too', () => {
    const m = movableProcessLogger(dir, 'vmwp-~warm-1.log', { host: 'h0', role: 'vmwp', vm: '~warm-1' });
    const child = m.log.child({ partition: 3 });
    m.log.info('booted');
    m.moveTo('vmwp-w1.log', { host: 'h0', role: 'vmwp', vm: 'w1' });
    m.log.info('claimed');
    child.info('from a child made before the move');
    // The template's lines moved with it: the VM's log starts with them, and no template file is left.
    expect(existsSync(join(dir, 'vmwp-~warm-1.log'))).to.equal(false);
    const after = lines(join(dir, 'vmwp-w1.log'));
    expect(after.map((l) => [l.msg, l.vm])).to.deep.equal([['booted', '~warm-1'], ['claimed', 'w1'], ['from a child made before the move', 'w1']]);
    expect(after[2].partition).to.equal(3);
  });

  it('a move into a log that exists appends the lines so far after what it holds', () => {
    const earlier = processLogger(dir, 'vmwp-w2.log', { host: 'h0', role: 'vmwp', vm: 'w2' });
    earlier.info('an earlier run');
    const m = movableProcessLogger(dir, 'vmwp-~warm-2.log', { host: 'h0', role: 'vmwp', vm: '~warm-2' });
    m.log.info('booted');
    m.moveTo('vmwp-w2.log', { host: 'h0', role: 'vmwp', vm: 'w2' });
    m.log.info('claimed');
    expect(existsSync(join(dir, 'vmwp-~warm-2.log'))).to.equal(false);
    expect(lines(join(dir, 'vmwp-w2.log')).map((l) => [l.msg, l.vm])).to.deep.equal([['an earlier run', 'w2'], ['booted', '~warm-2'], ['claimed', 'w2']]);
  });

  it('a move before anything was logged (no file yet) just goes on in the new file', () => {
    const m = movableProcessLogger(dir, 'vmwp-~warm-4.log', { host: 'h0', role: 'vmwp', vm: '~warm-4' });
    expect(() => m.moveTo('vmwp-w4.log', { host: 'h0', role: 'vmwp', vm: 'w4' })).to.not.throw();
    m.log.info('claimed');
    expect(existsSync(join(dir, 'vmwp-~warm-4.log'))).to.equal(false);
    expect(lines(join(dir, 'vmwp-w4.log')).map((l) => l.msg)).to.deep.equal(['claimed']);
  });

  it('a move whose file cannot be carried over leaves it and goes on logging', () => {
    const io: LogIo = { ...nodeLogIo, adopt: () => { throw Object.assign(new Error('EXDEV'), { code: 'EXDEV' }); } };
    const m = movableProcessLogger(dir, 'vmwp-~warm-3.log', { host: 'h0', role: 'vmwp', vm: '~warm-3' }, { io });
    m.log.info('booted');
    expect(() => m.moveTo('vmwp-w3.log', { host: 'h0', role: 'vmwp', vm: 'w3' })).to.not.throw();
    m.log.info('claimed');
    expect(lines(join(dir, 'vmwp-~warm-3.log')).map((l) => l.msg)).to.deep.equal(['booted']);
    expect(lines(join(dir, 'vmwp-w3.log')).map((l) => l.msg)).to.deep.equal(['claimed']);
  });

  it('does not throw when every write fails with ENOSPC (a full disk: /dev/full)', () => {
    const log = processLogger('/dev', 'full', BINDINGS);
    for (let i = 0; i < 10; i++) expect(() => log.info({ i }, 'into a full disk')).to.not.throw();
    expect(() => log.error(new Error('even an error'), 'with an error object')).to.not.throw();
  });

  it('does not throw when the log directory cannot be made', () => {
    let log: ReturnType<typeof processLogger> | null = null;
    expect(() => (log = processLogger('/dev/full/logs', 'root.log', BINDINGS))).to.not.throw();
    expect(() => log!.info('nowhere to go')).to.not.throw();
  });

  it('drops lines while writes fail and then writes one line saying how many were dropped and why', () => {
    const io = new SwitchableIo();
    const log = processLogger(dir, 'root.log', BINDINGS, { io, retryMs: 0 });
    log.info('before');
    io.failing = { code: 'ENOSPC', text: 'no space left on device' };
    for (let i = 0; i < 3; i++) expect(() => log.info({ i }, 'lost')).to.not.throw();
    io.failing = null;
    log.info('after');
    const ls = lines(join(dir, 'root.log'));
    expect(ls.map((l) => l.msg)).to.deep.equal([
      'before',
      `dropped 3 log lines: writing ${join(dir, 'root.log')} failed with ENOSPC (no space left on device)`,
      'after',
    ]);
    expect(ls[1]).to.include({ dropped: 3, error: 'ENOSPC', level: 40, host: 'h0', role: 'root', partition: 1, pid: process.pid });
    log.info('later');
    expect(lines(join(dir, 'root.log')).map((l) => l.msg), 'the drop is reported once').to.deep.equal([ls[0].msg, ls[1].msg, 'after', 'later']);
  });

  it('names the last error among several (EIO after ENOSPC)', () => {
    const io = new SwitchableIo();
    const log = processLogger(dir, 'root.log', BINDINGS, { io, retryMs: 0 });
    io.failing = { code: 'ENOSPC', text: 'no space left on device' };
    log.info('lost 1');
    io.failing = { code: 'EIO', text: 'i/o error' };
    log.info('lost 2');
    io.failing = null;
    log.info('after');
    const ls = lines(join(dir, 'root.log'));
    expect(ls[0]).to.include({ dropped: 2, error: 'EIO' });
    expect(ls[0].msg).to.match(/EIO \(input\/output error\)$/);
  });

  it('cuts a partially written line back, so the file stays whole JSON lines', () => {
    const io = new SwitchableIo();
    const log = processLogger(dir, 'root.log', BINDINGS, { io, retryMs: 0 });
    log.info('before');
    io.failing = { code: 'ENOSPC', text: 'no space left on device', partial: 7 };
    log.info('cut in half');
    io.failing = null;
    log.info('after');
    const ls = lines(join(dir, 'root.log'));
    expect(ls.map((l) => l.dropped ?? l.msg)).to.deep.equal(['before', 1, 'after']);
  });

  it('reopens its file after EBADF', () => {
    const io = new SwitchableIo();
    let opens = 0;
    const open = io.open.bind(io);
    io.open = (p: string): number => {
      opens++;
      return open(p);
    };
    const log = processLogger(dir, 'root.log', BINDINGS, { io, retryMs: 0 });
    log.info('one');
    io.failing = { code: 'EBADF', text: 'bad file descriptor' };
    log.info('lost');
    io.failing = null;
    log.info('two');
    expect(opens).to.equal(2);
    expect(lines(join(dir, 'root.log')).map((l) => l.dropped ?? l.msg)).to.deep.equal(['one', 1, 'two']);
  });

  it('writes the drop line once writing works again even if nothing else is logged', async () => {
    const io = new SwitchableIo();
    const log = processLogger(dir, 'root.log', BINDINGS, { io, retryMs: 5 });
    io.failing = { code: 'ENOSPC', text: 'no space left on device' };
    log.info('lost');
    io.failing = null;
    const file = join(dir, 'root.log');
    for (let i = 0; i < 400; i++) {
      let text = '';
      try { text = readFileSync(file, 'utf8'); } catch { /* not yet */ }
      if (text.includes('dropped')) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(lines(file).map((l) => l.dropped)).to.deep.equal([1]);
    const writes = io.writes;
    await new Promise((r) => setTimeout(r, 30));
    expect(io.writes, 'no more retries once reported').to.equal(writes);
  });
});
