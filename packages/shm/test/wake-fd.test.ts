/**
 * Unit tests of wake descriptors: an eventfd of one process that another process's event loop
 * polls (openWakeFd / signalWakeFd / watchWakeFd). A child process (fixtures/wake-waker.ts) makes
 * one and signals it round after round, waiting for each answer; the watch here answers. Also: a
 * watch stops calling after unwatch, a throwing callback does not end the process, a descriptor
 * that is not an eventfd or a process that does not exist is refused, and a closed descriptor's id
 * is ignored.
 */
import { expect } from 'chai';
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { closeWakeFd, createRegion, futexWake, openWakeFd, signalWakeFd, unlinkRegion, wakeFdAvailable, watchWakeFd, PAGE_SIZE, ShmError } from '../src/index.js';
import { withUncaughtCaptured } from './uncaught.js';

const WAKER = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'wake-waker.ts');
const name = `hvlab-ut-wake-${process.pid}-${randomBytes(4).toString('hex')}`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('wake descriptors (an eventfd polled by another process\'s event loop)', function () {
  before(function () {
    if (!wakeFdAvailable()) this.skip();
  });
  afterEach(() => unlinkRegion(name));

  it('calls back for every signal another process sends, without blocking the loop', async () => {
    const sab = createRegion(name, PAGE_SIZE);
    const w = new Int32Array(sab);
    const seen: number[] = [];
    let ticks = 0;
    const t = setInterval(() => ticks++, 1);
    const child = fork(WAKER, [name, '200'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
    let stop: (() => void) | null = null;
    try {
      const exit = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
      const { fd } = await new Promise<{ fd: number }>((resolve, reject) => {
        child.once('message', (m) => resolve(m as { fd: number }));
        child.once('exit', (c) => reject(new Error(`the waker exited ${c} before it sent its descriptor`)));
      });
      stop = watchWakeFd(child.pid!, fd, () => {
        const v = Atomics.load(w, 0);
        if (v !== Atomics.load(w, 1)) {
          seen.push(v);
          Atomics.store(w, 1, v);
          futexWake(sab, 1);
        }
      });
      child.send('go');
      expect(await exit).to.equal(0);
      expect(seen).to.deep.equal(Array.from({ length: 200 }, (_, i) => i + 1));
      expect(ticks).to.be.greaterThan(0);
    } finally {
      clearInterval(t);
      stop?.();
      child.kill();
    }
  });

  it('stops calling after unwatch, and a throwing callback does not end the process', async () => {
    const wake = openWakeFd();
    expect(wake).to.not.equal(null);
    let calls = 0;
    try {
      await withUncaughtCaptured(async (errors) => {
        const stop = watchWakeFd(process.pid, wake!.fd, () => {
          calls++;
          throw new Error('callback failed');
        });
        signalWakeFd(wake!.id);
        for (let i = 0; i < 200 && calls === 0; i++) await sleep(5);
        await sleep(5);
        expect(calls).to.equal(1);
        expect(errors).to.have.length(1);
        stop();
        stop(); // twice is harmless
        signalWakeFd(wake!.id);
        await sleep(50);
        expect(calls).to.equal(1);
      });
    } finally {
      closeWakeFd(wake!.id);
    }
  });

  it('coalesces signals sent while a call is pending into that call', async () => {
    const wake = openWakeFd()!;
    let calls = 0;
    const stop = watchWakeFd(process.pid, wake.fd, () => void calls++);
    try {
      for (let i = 0; i < 10; i++) signalWakeFd(wake.id);
      for (let i = 0; i < 200 && calls === 0; i++) await sleep(5);
      await sleep(20);
      expect(calls).to.equal(1);
    } finally {
      stop();
      closeWakeFd(wake.id);
    }
  });

  it('refuses what is not an eventfd, a process that does not exist, and bad arguments', () => {
    // Descriptor 1 of this process is a pipe or a terminal, never an eventfd.
    expect(() => watchWakeFd(process.pid, 1, () => {})).to.throw(ShmError, /not an eventfd/);
    expect(() => watchWakeFd(process.pid, 987654, () => {})).to.throw(ShmError, /pidfd_getfd/);
    expect(() => watchWakeFd(2147483647, 3, () => {})).to.throw(ShmError, /pidfd_open/);
    expect(() => watchWakeFd(0, 3, () => {})).to.throw(ShmError, /pid out of range/);
    expect(() => watchWakeFd(process.pid, -1, () => {})).to.throw(ShmError, /descriptor out of range/);
    expect(() => watchWakeFd(process.pid, 3, null as unknown as () => void)).to.throw(ShmError, /function/);
  });

  it('ignores a closed descriptor\'s id and ids never handed out', () => {
    const wake = openWakeFd()!;
    closeWakeFd(wake.id);
    expect(() => signalWakeFd(wake.id)).to.not.throw();
    expect(() => closeWakeFd(wake.id)).to.not.throw();
    expect(() => signalWakeFd(-5)).to.not.throw();
    expect(() => signalWakeFd(Number.NaN)).to.not.throw();
  });
});
