/**
 * The pages a guest writes for its host to read (status and kernel page): the VMWP decodes them
 * with decodeGuestStatus and decodeGuestKernelInfo, which answer a page no booted kernel would
 * write with a reason and never throw, whatever the guest put there.
 */
import { expect } from 'chai';
import {
  BootState, GUEST_KERNEL_INFO_BYTES, GUEST_STATUS_BYTES, KERNEL_MAGIC, KernelPage, STATUS_MAGIC, StatusPage, decodeGuestKernelInfo, decodeGuestStatus, seededRandom,
} from '../src/index.js';

function statusPage(over: (dv: DataView) => void = () => {}): Uint8Array {
  const b = new Uint8Array(0x60);
  const dv = new DataView(b.buffer);
  dv.setUint32(StatusPage.magic, STATUS_MAGIC, true);
  dv.setUint32(StatusPage.version, 1, true);
  dv.setUint32(StatusPage.bootState, BootState.Running, true);
  dv.setBigUint64(StatusPage.progress, 1234n, true);
  dv.setBigUint64(StatusPage.steps, 99n, true);
  dv.setUint32(StatusPage.messagesReceived, 7, true);
  dv.setUint32(StatusPage.eventsReceived, 8, true);
  over(dv);
  return b;
}

function kernelPage(over: (dv: DataView) => void = () => {}): Uint8Array {
  const b = new Uint8Array(0x60);
  const dv = new DataView(b.buffer);
  dv.setUint32(KernelPage.magic, KERNEL_MAGIC, true);
  dv.setInt32(KernelPage.running, 1, true);
  dv.setInt32(KernelPage.maxRunning, 2, true);
  dv.setFloat64(KernelPage.rtcFromCmosMs, 1.7e12, true);
  over(dv);
  return b;
}

describe('the guest pages the VMWP reads (status and kernel page)', () => {
  it('decodes the pages a booted kernel writes', () => {
    expect(decodeGuestStatus(statusPage())).to.deep.equal({ booted: true, progress: 1234, steps: 99, messagesReceived: 7, eventsReceived: 8 });
    expect(decodeGuestStatus(statusPage((dv) => dv.setUint32(StatusPage.bootState, BootState.Booting, true)))).to.include({ booted: false });
    expect(decodeGuestKernelInfo(kernelPage())).to.deep.equal({ running: 1, maxRunning: 2, rtcFromCmosMs: 1.7e12 });
    // A read of exactly the bytes the decoders need is enough.
    expect(decodeGuestStatus(statusPage().subarray(0, GUEST_STATUS_BYTES))).to.not.be.a('string');
    expect(decodeGuestKernelInfo(kernelPage().subarray(0, GUEST_KERNEL_INFO_BYTES))).to.not.be.a('string');
  });

  it('answers what a guest could scribble there with a reason, naming what is wrong', () => {
    const cases: Array<[unknown, RegExp, 'status' | 'kernel']> = [
      [statusPage((dv) => dv.setUint32(StatusPage.magic, 0, true)), /magic/, 'status'],
      [statusPage((dv) => dv.setBigUint64(StatusPage.progress, 2n ** 64n - 1n, true)), /progress is past 2\^53/, 'status'],
      [statusPage((dv) => dv.setBigUint64(StatusPage.steps, 2n ** 53n, true)), /step count/, 'status'],
      [statusPage().subarray(0, GUEST_STATUS_BYTES - 1), new RegExp(`is ${GUEST_STATUS_BYTES - 1} bytes, not ${GUEST_STATUS_BYTES}`), 'status'],
      [kernelPage((dv) => dv.setUint32(KernelPage.magic, STATUS_MAGIC, true)), /magic/, 'kernel'],
      [kernelPage((dv) => dv.setInt32(KernelPage.running, -1, true)), /-1 VPs hold an LP/, 'kernel'],
      [kernelPage((dv) => dv.setInt32(KernelPage.maxRunning, 65, true)), /at most 65 VPs/, 'kernel'],
      [kernelPage((dv) => dv.setFloat64(KernelPage.rtcFromCmosMs, Number.NaN, true)), /CMOS time NaN/, 'kernel'],
      [kernelPage((dv) => dv.setFloat64(KernelPage.rtcFromCmosMs, -5, true)), /CMOS time -5/, 'kernel'],
    ];
    for (const [bytes, re, which] of cases) {
      const got = which === 'status' ? decodeGuestStatus(bytes) : decodeGuestKernelInfo(bytes);
      expect(got, String(re)).to.be.a('string').and.match(re);
    }
    const hostile = { toString: () => { throw new Error('boom'); } };
    for (const v of [null, undefined, 0, 'page', [], {}, hostile, new Uint16Array(64), new ArrayBuffer(64)]) {
      expect(decodeGuestStatus(v)).to.equal('the status page did not arrive as bytes');
      expect(decodeGuestKernelInfo(v)).to.equal('the kernel page did not arrive as bytes');
    }
  });

  it('never throws on random pages, and what it accepts is in range (seeded fuzz)', () => {
    const next = seededRandom(0x9a6e);
    let accepted = 0;
    for (let i = 0; i < 20000; i++) {
      const b = i % 2 === 0 ? statusPage() : kernelPage();
      // A few random bytes over a sound page, or a page of noise, of a random length around the read.
      const noise = next() < 0.1;
      for (let k = 0, n = 1 + Math.floor(next() * 4); k < b.length && (noise || k < n); k++) b[noise ? k : Math.floor(next() * b.length)] = Math.floor(next() * 256);
      const bytes = b.subarray(0, Math.floor(next() * 8) === 0 ? Math.floor(next() * b.length) : b.length);
      const s = decodeGuestStatus(bytes);
      const k = decodeGuestKernelInfo(bytes);
      if (typeof s !== 'string') {
        accepted++;
        expect(Number.isSafeInteger(s.progress) && s.progress >= 0 && Number.isSafeInteger(s.steps) && s.steps >= 0).to.equal(true);
        expect(s.messagesReceived >= 0 && s.eventsReceived >= 0 && typeof s.booted === 'boolean').to.equal(true);
      }
      if (typeof k !== 'string') {
        accepted++;
        expect(k.running >= 0 && k.running <= 64 && k.maxRunning >= 0 && k.maxRunning <= 64).to.equal(true);
        expect(Number.isFinite(k.rtcFromCmosMs) && k.rtcFromCmosMs >= 0).to.equal(true);
      }
    }
    expect(accepted, 'some mutated pages stay sound').to.be.greaterThan(1000);
  });
});
