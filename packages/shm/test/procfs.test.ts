/**
 * The /proc decoders (src/procfs.ts): what the kernel writes decodes to what it says, what another
 * program chose (a title with parentheses and spaces, an environment without '=') decodes the way
 * the kernel and getenv read it, and no input at all throws. Real processes for the readers: this
 * one and a child that titles itself like a stat line.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import fc from 'fast-check';
import {
  decodeCmdline, decodeEnviron, decodeProcChildren, decodeProcStat, procChildren, procCmdline, procEnviron, procPids, procStartTime,
  procStat, procState, procTitle, selfChildren, titleOf,
} from '../src/procfs.js';

const exited = (c: ChildProcess): Promise<void> =>
  new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

/** A stat line as the kernel writes it (52 fields), with the chosen fields in place. */
function statLine(f: { pid: number; comm: string; state: string; ppid: number; startTime: number }): string {
  const rest = [f.state, String(f.ppid), ...Array.from({ length: 17 }, (_, i) => String(i * 7)), String(f.startTime), ...Array.from({ length: 32 }, () => '0')];
  return `${f.pid} (${f.comm}) ${rest.join(' ')}\n`;
}

describe('procfs decoders', () => {
  it('decodes this process\'s own stat: its pid, its parent, a running or sleeping state', () => {
    const s = procStat(process.pid);
    expect(s).to.not.equal(null);
    expect(s!.pid).to.equal(process.pid);
    expect(s!.ppid).to.equal(process.ppid);
    expect(['R', 'S']).to.include(s!.state);
    expect(s!.startTime).to.be.a('number').and.to.be.greaterThan(0);
    expect(procStartTime(process.pid)).to.equal(s!.startTime);
    expect(procEnviron(process.pid)?.get('PATH')).to.equal(process.env.PATH);
    expect(procCmdline(process.pid)?.length).to.be.greaterThan(0);
  });

  it('takes the command name up to the line\'s last parenthesis, as a hostile title makes it', () => {
    const line = statLine({ pid: 42, comm: 'a) Z 1 (b', state: 'S', ppid: 7, startTime: 991 });
    expect(decodeProcStat(line)).to.deep.equal({ pid: 42, comm: 'a) Z 1 (b', state: 'S', ppid: 7, startTime: 991 });
  });

  it('refuses what is not a stat line', () => {
    for (const bad of [
      '', '42', '42 (x)', '(x) S 1', 'x (y) S 1 2', '42 (x) SS 1 ' + '0 '.repeat(30), '-1 (x) S 1 ' + '0 '.repeat(30), '42 (x)S 1 ' + '0 '.repeat(30),
      '42 (x) S -1 ' + '0 '.repeat(30), '42 (x) S 1 ' + '0 '.repeat(17) + '1e9 ' + '0 '.repeat(10), '0 (x) S 1 ' + '0 '.repeat(30),
    ]) {
      expect(decodeProcStat(bad), JSON.stringify(bad)).to.equal(null);
    }
    for (const notText of [null, undefined, 42, {}, { toString: () => { throw new Error('no'); } }]) expect(decodeProcStat(notText)).to.equal(null);
  });

  it('decodes any stat line it is given back to its fields (fuzzed)', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.string({ maxLength: 16 }).filter((c) => !c.includes('\n')),
      fc.constantFrom('R', 'S', 'D', 'T', 't', 'Z', 'X', 'I'),
      fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      fc.maxSafeNat().filter((n) => String(n).length <= 10),
      (pid, comm, state, ppid, startTime) => {
        expect(decodeProcStat(statLine({ pid, comm, state, ppid, startTime }))).to.deep.equal({ pid, comm, state, ppid, startTime });
      },
    ), { numRuns: 2000, seed: 0x9f0c });
  });

  it('never throws, and what it accepts is well formed, whatever the bytes (fuzzed)', () => {
    const field = fc.oneof(fc.nat().map(String), fc.string({ maxLength: 6 }), fc.constantFrom('S', ')', '(', ' ', '', '-1', '1e3', '0x10'));
    const texts = fc.oneof(
      fc.string({ maxLength: 300 }),
      fc.string({ unit: 'binary', maxLength: 300 }),
      fc.array(field, { maxLength: 60 }).map((a) => a.join(' ')),
      fc.tuple(fc.nat(), fc.string({ maxLength: 20 }), fc.array(field, { maxLength: 40 })).map(([p, c, r]) => `${p} (${c}) ${r.join(' ')}`),
    );
    fc.assert(fc.property(texts, (t) => {
      const s = decodeProcStat(t);
      if (s !== null) {
        expect(Number.isSafeInteger(s.pid) && s.pid > 0).to.equal(true);
        expect(s.state).to.match(/^[A-Za-z]$/);
        expect(Number.isSafeInteger(s.ppid) && s.ppid >= 0).to.equal(true);
        expect(Number.isSafeInteger(s.startTime) && s.startTime >= 0).to.equal(true);
      }
      for (const p of decodeProcChildren(t)) expect(Number.isSafeInteger(p) && p > 0 && p < 2 ** 31).to.equal(true);
      for (const a of decodeCmdline(t)) expect(a).to.be.a('string');
      for (const [k, v] of decodeEnviron(t)) {
        expect(k.length).to.be.greaterThan(0);
        expect(k.includes('=') || k.includes('\0') || v.includes('\0')).to.equal(false);
      }
    }), { numRuns: 3000, seed: 0x51ab });
  });

  it('reads the children list back, skipping what is not a pid (fuzzed)', () => {
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 2 ** 31 - 1 }), { maxLength: 50 }), fc.array(fc.constantFrom('x', '-3', '0', '1.5', '99999999999'), { maxLength: 5 }), (pids, junk) => {
      expect(decodeProcChildren(`${pids.join(' ')} `)).to.deep.equal(pids);
      expect(decodeProcChildren([...pids, ...junk].join(' '))).to.deep.equal(pids);
    }), { numRuns: 500, seed: 7 });
    expect(decodeProcChildren('')).to.deep.equal([]);
    expect(decodeProcChildren(null)).to.deep.equal([]);
  });

  it('reads arguments and an environment back as the kernel lays them out (fuzzed)', () => {
    const arg = fc.string({ maxLength: 20 }).filter((s) => !s.includes('\0'));
    fc.assert(fc.property(fc.array(arg, { minLength: 1, maxLength: 10 }).filter((a) => a[a.length - 1] !== ''), (args) => {
      expect(decodeCmdline(`${args.join('\0')}\0`)).to.deep.equal(args);
      expect(titleOf(decodeCmdline(`${args.join('\0')}\0\0\0`))).to.equal(args.filter((a) => a !== '').join(' '));
    }), { numRuns: 500, seed: 11 });
    const name = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !s.includes('=') && !s.includes('\0'));
    fc.assert(fc.property(fc.uniqueArray(fc.tuple(name, arg), { selector: ([k]) => k, maxLength: 12 }), (env) => {
      const text = env.map(([k, v]) => `${k}=${v}\0`).join('') + 'NOEQUALS\0=novalue\0';
      expect([...decodeEnviron(text)]).to.deep.equal(env);
    }), { numRuns: 500, seed: 13 });
    // The first of a name wins, as getenv reads it.
    expect(decodeEnviron('A=1\0A=2\0').get('A')).to.equal('1');
  });
});

describe('procfs readers', () => {
  let child: ChildProcess | null = null;
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (child) await exited(child);
    child = null;
  });

  it('reads a child that titles itself like a stat line, and nothing once it is gone', async () => {
    const title = 'a) Z 1 (b';
    child = spawn(process.execPath, ['-e', `process.title = ${JSON.stringify(title)}; process.stdout.write('up\\n'); setInterval(() => {}, 1000)`], {
      stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, HVLAB_PROCFS_TEST: 'marker=with=equals' },
    });
    await new Promise<void>((r) => child!.stdout!.once('data', () => r()));
    const pid = child.pid!;
    const s = procStat(pid);
    expect(s?.pid).to.equal(pid);
    expect(s?.ppid).to.equal(process.pid);
    // The kernel keeps 15 bytes of the name; the title is shorter.
    expect(s?.comm).to.equal(title);
    expect(procTitle(pid)).to.equal(title);
    expect(procEnviron(pid)?.get('HVLAB_PROCFS_TEST')).to.equal('marker=with=equals');
    expect(procChildren(process.pid)).to.include(pid);
    expect(selfChildren()).to.include(pid);
    expect(procPids()).to.include(pid);
    const start = procStartTime(pid);
    expect(start).to.be.a('number');
    child.kill('SIGKILL');
    await exited(child);
    // Reaped by Node: gone from /proc.
    expect(procStat(pid)).to.equal(null);
    expect(procState(pid)).to.equal(null);
    expect(procTitle(pid)).to.equal(null);
    expect(procEnviron(pid)).to.equal(null);
    expect(procChildren(pid)).to.deep.equal([]);
  });

  it('answers null for pids that cannot be', () => {
    for (const p of [0, -1, 1.5, Number.NaN, 2 ** 53]) {
      expect(procStat(p)).to.equal(null);
      expect(procCmdline(p)).to.equal(null);
      expect(procEnviron(p)).to.equal(null);
    }
  });
});
