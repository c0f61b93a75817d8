/**
 * Unit tests of the emulated CMOS RTC (`CmosRtc`, ports 0x70/0x71) with an injected clock: the
 * time registers in BCD and binary, the RTC offset, the NVRAM, which registers a guest may write,
 * and the saved state.
 */
import { expect } from 'chai';
import { CmosRtc, CMOS_DATA_PORT, CMOS_INDEX_PORT } from '../src/cmos/index.js';
import { decodeCmosState } from '../src/cmos/state.js';

/** Thursday 29 February 2024, 13:45:07.250 UTC. */
const FIXED = Date.UTC(2024, 1, 29, 13, 45, 7, 250);

function readReg(rtc: CmosRtc, reg: number): number {
  rtc.access(CMOS_INDEX_PORT, true, reg);
  return rtc.access(CMOS_DATA_PORT, false, 0);
}
function writeReg(rtc: CmosRtc, reg: number, value: number): void {
  rtc.access(CMOS_INDEX_PORT, true, reg);
  expect(rtc.access(CMOS_DATA_PORT, true, value)).to.equal(0);
}

/** The time registers a guest reads: seconds, minutes, hours, weekday, day, month, year, century. */
function readTime(rtc: CmosRtc): number[] {
  return [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map((r) => readReg(rtc, r));
}

describe('CmosRtc', () => {
  it('answers the time registers in BCD, 24-hour, for the injected clock', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    // 07 s, 45 min, 13 h, Thursday = weekday 5 (Sunday = 1), 29th, February, (20)24.
    expect(readTime(rtc)).to.deep.equal([0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
  });

  it('reads the clock at every access, so time moves on', () => {
    let now = FIXED;
    const rtc = new CmosRtc(0, () => now);
    expect(readReg(rtc, 0x00)).to.equal(0x07);
    now += 5_000;
    expect(readReg(rtc, 0x00)).to.equal(0x12);
    now += 60_000;
    expect(readReg(rtc, 0x02)).to.equal(0x46);
  });

  it('adds the VM RTC offset: +11 h 15 min carries over the leap day into March', () => {
    const rtc = new CmosRtc((11 * 60 + 15) * 60_000, () => FIXED);
    // 2024-03-01 01:00:07, a Friday (weekday 6).
    expect(readTime(rtc)).to.deep.equal([0x07, 0x00, 0x01, 0x06, 0x01, 0x03, 0x24, 0x20]);
  });

  it('a negative offset can go back across a century', () => {
    const rtc = new CmosRtc(Date.UTC(1999, 11, 31, 23, 59, 59) - FIXED, () => FIXED);
    expect(readTime(rtc)).to.deep.equal([0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]);
  });

  it('switches to binary when the guest sets status B bit 2, and back to BCD when it clears it', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    expect(readReg(rtc, 0x0b)).to.equal(0x02); // 24-hour, BCD
    writeReg(rtc, 0x0b, 0x06);
    expect(readReg(rtc, 0x0b)).to.equal(0x06);
    expect(readTime(rtc)).to.deep.equal([7, 45, 13, 5, 29, 2, 24, 20]);
    writeReg(rtc, 0x0b, 0x02);
    expect(readTime(rtc)).to.deep.equal([0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
  });

  it('reports valid RAM and time in status D and its divider in status A', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    expect(readReg(rtc, 0x0d)).to.equal(0x80);
    expect(readReg(rtc, 0x0a)).to.equal(0x26);
  });

  it('keeps NVRAM bytes written at 0x20 and above, masked to 8 bits', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    writeReg(rtc, 0x20, 0xa5);
    writeReg(rtc, 0x7f, 0x1ff);
    writeReg(rtc, 0x0e, 0x11);
    expect(readReg(rtc, 0x20)).to.equal(0xa5);
    expect(readReg(rtc, 0x7f)).to.equal(0xff);
    expect(readReg(rtc, 0x0e)).to.equal(0x11);
    expect(readReg(rtc, 0x21)).to.equal(0);
  });

  it('ignores guest writes to the time registers and to status A, C and D', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    for (const reg of [0x00, 0x02, 0x04, 0x09, 0x0a, 0x0c, 0x0d]) writeReg(rtc, reg, 0x55);
    expect(readTime(rtc)).to.deep.equal([0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
    expect(readReg(rtc, 0x0a)).to.equal(0x26);
    expect(readReg(rtc, 0x0d)).to.equal(0x80);
  });

  it('drops bit 7 of the index (the NMI mask) and reads 0xff from the index port', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    rtc.access(CMOS_INDEX_PORT, true, 0x80 | 0x04);
    expect(rtc.access(CMOS_DATA_PORT, false, 0)).to.equal(0x13);
    expect(rtc.access(CMOS_INDEX_PORT, false, 0)).to.equal(0xff);
    expect(rtc.access(0x72, false, 0)).to.equal(0xff);
  });

  it('the index stays selected across data accesses', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    rtc.access(CMOS_INDEX_PORT, true, 0x30);
    rtc.access(CMOS_DATA_PORT, true, 0x42);
    expect(rtc.access(CMOS_DATA_PORT, false, 0)).to.equal(0x42);
    expect(rtc.access(CMOS_DATA_PORT, false, 0)).to.equal(0x42);
  });

  it('save then restore into a fresh RTC gives back the index, the NVRAM and the offset', () => {
    const offset = 3 * 3_600_000;
    const rtc = new CmosRtc(offset, () => FIXED);
    writeReg(rtc, 0x20, 0x12);
    writeReg(rtc, 0x40, 0x34);
    writeReg(rtc, 0x0b, 0x06); // binary
    rtc.access(CMOS_INDEX_PORT, true, 0x40); // selected at save time
    const saved = rtc.save();
    expect(saved.version).to.equal(1);
    expect(saved.nvram).to.have.length(128);
    expect(saved.offsetMs).to.equal(offset);

    const copy = new CmosRtc(0, () => FIXED);
    copy.restore(JSON.parse(JSON.stringify(saved)) as ReturnType<CmosRtc['save']>);
    expect(copy.access(CMOS_DATA_PORT, false, 0), 'the selected register').to.equal(0x34);
    expect(readReg(copy, 0x20)).to.equal(0x12);
    expect(readReg(copy, 0x04), 'hour with the offset, in binary').to.equal(16);
    expect(copy.save()).to.deep.equal({ ...saved, index: 0x04 });
  });

  it('save is a copy: later writes do not change a saved state', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    const saved = rtc.save();
    writeReg(rtc, 0x20, 0x77);
    expect(saved.nvram[0x20]).to.equal(0);
  });

  it('its state decoder rejects a state of another version, a wrong NVRAM size or a non-finite offset, naming the field', () => {
    const rtc = new CmosRtc(0, () => FIXED);
    writeReg(rtc, 0x20, 0x99);
    const good = rtc.save();
    const bad: unknown[] = [
      { ...good, version: 2 },
      { ...good, nvram: good.nvram.slice(0, 127) },
      { ...good, nvram: 'x'.repeat(128) },
      { ...good, nvram: [...good.nvram.slice(0, 127), 256] },
      { ...good, offsetMs: Infinity },
      { ...good, extra: 1 },
      null,
    ];
    const why = [/cmos\.version/, /cmos\.nvram has 127/, /cmos\.nvram is/, /cmos\.nvram\[127\]/, /cmos\.offsetMs/, /"extra"/, /cmos is null/];
    bad.forEach((s, i) => expect(decodeCmosState(s), JSON.stringify(s)?.slice(0, 40)).to.be.a('string').and.match(why[i]));
    expect(decodeCmosState(JSON.parse(JSON.stringify(good)))).to.deep.equal(good);
    expect(readReg(rtc, 0x20)).to.equal(0x99);
  });
});
