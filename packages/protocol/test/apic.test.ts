/**
 * Unit tests of the shared-page contracts in vpage.ts and vm.ts: the virtual APIC over a VP page
 * (priority, TPR/PPR masking, EOI, auto-EOI, save/load), the synthetic-timer config encoding, and
 * the parsing of workload specs.
 */
import { expect } from 'chai';
import {
  VirtualApicView, VpPage, VP_PAGE_BYTES, stimerConfig, decodeStimerConfig, StimerConfig, nextPeriodicExpiry, StimerNextView, STIMER_MAX_CATCHUP,
} from '../src/vpage.js';
import { parseWorkload, DEFAULT_MEMDIRTY_BYTES, DEFAULT_SLEEP_PERIOD_MS } from '../src/vm.js';

const PAGE_OFFSET = 4096;

/** A two-page region with the view over the second page (VP 0 of a region: the first is the header). */
function makeApic(): { apic: VirtualApicView; words: Int32Array } {
  const words = new Int32Array(new SharedArrayBuffer(8192));
  return { apic: new VirtualApicView(words, PAGE_OFFSET), words };
}

/** Bits of a 256-bit array (8 words) at `byteOffset` in the VP page, as a sorted vector list. */
function vectorsAt(words: Int32Array, byteOffset: number): number[] {
  const base = (PAGE_OFFSET + byteOffset) >> 2;
  const out: number[] = [];
  for (let w = 0; w < 8; w++) for (let b = 0; b < 32; b++) if ((words[base + w] >>> b) & 1) out.push(w * 32 + b);
  return out;
}

describe('VirtualApicView', () => {
  it('is empty at first: nothing pending, nothing in service, PPR 0', () => {
    const { apic } = makeApic();
    expect(apic.highestPending()).to.equal(-1);
    expect(apic.highestInService()).to.equal(-1);
    expect(apic.deliverable()).to.equal(-1);
    expect(apic.ppr()).to.equal(0);
    expect(apic.eoi()).to.equal(-1);
  });

  it('delivers the highest pending vector first, across IRR words', () => {
    const { apic } = makeApic();
    for (const v of [0x31, 0x95, 0x40, 0x5f, 0xfe]) expect(apic.assert(v)).to.equal(true);
    const taken: number[] = [];
    for (let v = apic.deliverable(); v >= 0; v = apic.deliverable()) {
      expect(apic.accept(v)).to.equal(true);
      taken.push(v);
      expect(apic.eoi()).to.equal(v);
    }
    expect(taken).to.deep.equal([0xfe, 0x95, 0x5f, 0x40, 0x31]);
  });

  it('sets IRR bits only in its own page, at the documented offset', () => {
    const { apic, words } = makeApic();
    apic.assert(0x20);
    apic.assert(0xff);
    expect(vectorsAt(words, VpPage.irr)).to.deep.equal([0x20, 0xff]);
    // The header page (the first 4 KiB) is untouched.
    expect(words.subarray(0, VP_PAGE_BYTES / 4).every((x) => x === 0)).to.equal(true);
  });

  it('assert returns false when the vector is already pending', () => {
    const { apic } = makeApic();
    expect(apic.assert(0x41)).to.equal(true);
    expect(apic.assert(0x41)).to.equal(false);
    expect(apic.assert(0x42)).to.equal(true);
    apic.accept(0x41);
    // Taken (now in service, not pending): it can be asserted again.
    expect(apic.assert(0x41)).to.equal(true);
  });

  it('does not deliver a pending vector whose class is not above the PPR class (in-service priority)', () => {
    const { apic } = makeApic();
    apic.assert(0x51);
    expect(apic.accept(apic.deliverable())).to.equal(true);
    expect(apic.highestInService()).to.equal(0x51);
    expect(apic.ppr()).to.equal(0x50);
    apic.assert(0x5e); // same class 5, higher vector: still masked
    expect(apic.highestPending()).to.equal(0x5e);
    expect(apic.deliverable()).to.equal(-1);
    apic.assert(0x31); // lower class: masked
    expect(apic.deliverable()).to.equal(-1);
    apic.assert(0x60); // class 6 > 5: nests
    expect(apic.deliverable()).to.equal(0x60);
  });

  it('never delivers class 0 vectors (0x00-0x0f): the class must exceed PPR class 0', () => {
    const { apic } = makeApic();
    apic.assert(0x0f);
    expect(apic.highestPending()).to.equal(0x0f);
    expect(apic.deliverable()).to.equal(-1);
    apic.assert(0x10);
    expect(apic.deliverable()).to.equal(0x10);
  });

  it('TPR masks every class at or below its own', () => {
    const { apic } = makeApic();
    apic.assert(0x41);
    apic.setTpr(0x40);
    expect(apic.getTpr()).to.equal(0x40);
    expect(apic.ppr()).to.equal(0x40);
    expect(apic.deliverable()).to.equal(-1);
    apic.setTpr(0x3f); // class 3: 0x41 (class 4) gets through
    expect(apic.ppr()).to.equal(0x30);
    expect(apic.deliverable()).to.equal(0x41);
    apic.setTpr(0xf0);
    expect(apic.deliverable()).to.equal(-1);
    apic.setTpr(0);
    expect(apic.deliverable()).to.equal(0x41);
  });

  it('keeps only the low 8 bits of the TPR', () => {
    const { apic } = makeApic();
    apic.setTpr(0x1234);
    expect(apic.getTpr()).to.equal(0x34);
  });

  it('PPR is the larger of the TPR class and the highest in-service class', () => {
    const { apic } = makeApic();
    apic.assert(0x72);
    apic.accept(0x72);
    apic.setTpr(0x30);
    expect(apic.ppr()).to.equal(0x70);
    apic.setTpr(0x95);
    expect(apic.ppr()).to.equal(0x90);
  });

  it('EOI retires the highest in-service vector and re-enables the lower classes', () => {
    const { apic } = makeApic();
    apic.assert(0x41);
    apic.accept(apic.deliverable()); // 0x41 in service
    apic.assert(0x81);
    expect(apic.deliverable()).to.equal(0x81);
    apic.accept(0x81); // nested: 0x41 and 0x81 in service
    apic.assert(0x61);
    apic.assert(0x35);
    expect(apic.deliverable()).to.equal(-1); // 0x61 is below class 8
    expect(apic.eoi()).to.equal(0x81);
    expect(apic.highestInService()).to.equal(0x41);
    expect(apic.deliverable()).to.equal(0x61); // class 6 > class 4
    apic.accept(0x61);
    expect(apic.eoi()).to.equal(0x61);
    expect(apic.deliverable()).to.equal(-1); // 0x35: class 3 < class 4 still in service
    expect(apic.eoi()).to.equal(0x41);
    expect(apic.deliverable()).to.equal(0x35);
  });

  it('auto-EOI vectors are cleared on accept without entering the ISR', () => {
    const { apic, words } = makeApic();
    expect(apic.assert(0x30, true)).to.equal(true);
    expect(vectorsAt(words, VpPage.aeoi)).to.deep.equal([0x30]);
    expect(apic.deliverable()).to.equal(0x30);
    expect(apic.accept(0x30)).to.equal(false); // no EOI needed
    expect(apic.highestPending()).to.equal(-1);
    expect(apic.highestInService()).to.equal(-1);
    expect(apic.ppr()).to.equal(0);
    expect(vectorsAt(words, VpPage.aeoi)).to.deep.equal([]);
    // The same vector asserted again without auto-EOI goes through the ISR.
    apic.assert(0x30);
    expect(apic.accept(0x30)).to.equal(true);
    expect(apic.highestInService()).to.equal(0x30);
  });

  it('an auto-EOI vector taken while another is in service leaves that one in service', () => {
    const { apic } = makeApic();
    apic.assert(0x40);
    apic.accept(0x40);
    apic.assert(0x52, true);
    expect(apic.deliverable()).to.equal(0x52);
    expect(apic.accept(0x52)).to.equal(false);
    expect(apic.highestInService()).to.equal(0x40);
    expect(apic.eoi()).to.equal(0x40);
    expect(apic.eoi()).to.equal(-1);
  });

  it('snapshot and load round-trip the whole state, including vector 255 (the sign bit of the last word)', () => {
    const { apic } = makeApic();
    for (const v of [0x10, 0x3f, 0x80, 0xff]) apic.assert(v);
    apic.assert(0x31, true);
    apic.accept(0x80);
    apic.accept(0xff);
    apic.setTpr(0x20);
    const snap = apic.snapshot();
    expect(snap.tpr).to.equal(0x20);
    expect(snap.isr[7]).to.equal(0x80000000); // vector 0xff: bit 31 of the last word, read unsigned
    const other = makeApic();
    other.apic.load(JSON.parse(JSON.stringify(snap)) as typeof snap);
    expect(other.apic.snapshot()).to.deep.equal(snap);
    expect(other.apic.highestInService()).to.equal(0xff);
    expect(other.apic.highestPending()).to.equal(0x3f);
    expect(other.apic.accept(0x31)).to.equal(false); // the auto-EOI bit survived
    expect(other.apic.eoi()).to.equal(0xff);
    expect(other.apic.eoi()).to.equal(0x80);
  });

  it('load replaces the previous state rather than merging with it', () => {
    const { apic } = makeApic();
    const empty = apic.snapshot();
    apic.assert(0x77);
    apic.accept(0x77);
    apic.assert(0x99, true);
    apic.setTpr(0xa0);
    apic.load(empty);
    expect(apic.snapshot()).to.deep.equal(empty);
    expect(apic.highestPending()).to.equal(-1);
    expect(apic.highestInService()).to.equal(-1);
  });
});

describe('synthetic timer config', () => {
  it('places the fields at the documented bits', () => {
    expect(stimerConfig({ enable: true })).to.equal(StimerConfig.enable);
    expect(stimerConfig({ enable: false, periodic: true })).to.equal(StimerConfig.periodic);
    expect(stimerConfig({ enable: false, direct: true })).to.equal(StimerConfig.direct);
    expect(stimerConfig({ enable: true, periodic: true, vector: 0x41, direct: true, sint: 2 })).to.equal(1 | 2 | (0x41 << 4) | (1 << 12) | (2 << 16));
  });

  it('decode(encode(x)) is x for every combination of flags, boundary vectors and SINTs', () => {
    for (const enable of [false, true]) {
      for (const periodic of [false, true]) {
        for (const lazy of [false, true]) {
          for (const direct of [false, true]) {
            for (const vector of [0, 1, 0x40, 0xfe, 0xff]) {
              for (const sint of [0, 2, 15]) {
                const cfg = { enable, periodic, lazy, vector, direct, sint };
                expect(decodeStimerConfig(stimerConfig(cfg)), JSON.stringify(cfg)).to.deep.equal(cfg);
              }
            }
          }
        }
      }
    }
  });

  it('truncates an out-of-range vector or SINT to its field instead of spilling into the next one', () => {
    const d = decodeStimerConfig(stimerConfig({ enable: false, vector: 0x1ff, sint: 0x1f }));
    expect(d).to.deep.equal({ enable: false, periodic: false, lazy: false, vector: 0xff, direct: false, sint: 0xf });
  });

  it('decoding ignores the reserved bits', () => {
    const reserved = ~0 & ~(1 | 2 | 8 | (0xff << 4) | (1 << 12) | (0xf << 16));
    expect(decodeStimerConfig(reserved)).to.deep.equal({ enable: false, periodic: false, lazy: false, vector: 0, direct: false, sint: 0 });
  });

  it('places the lazy flag at bit 3', () => {
    expect(stimerConfig({ enable: false, lazy: true })).to.equal(StimerConfig.lazy);
    expect(StimerConfig.lazy).to.equal(8);
  });
});

describe('periodic timer expirations', () => {
  it('stay on the grid of the first expiration (next = previous + period, not now + period)', () => {
    expect(nextPeriodicExpiry(10_000, 10_000, 10_400, false)).to.equal(20_000);
    expect(nextPeriodicExpiry(20_000, 10_000, 29_999, true)).to.equal(30_000);
  });

  it('a timer that is not lazy delivers each missed period next (catch-up), a lazy one skips to the grid', () => {
    // Expired at 10 000, noticed at 35 000: periods 20 000 and 30 000 were missed.
    expect(nextPeriodicExpiry(10_000, 10_000, 35_000, false)).to.equal(20_000);
    expect(nextPeriodicExpiry(20_000, 10_000, 35_000, false)).to.equal(30_000);
    expect(nextPeriodicExpiry(30_000, 10_000, 35_000, false)).to.equal(40_000);
    expect(nextPeriodicExpiry(10_000, 10_000, 35_000, true)).to.equal(40_000);
  });

  it('a timer more than STIMER_MAX_CATCHUP periods behind skips to its grid, phase kept', () => {
    const period = 10_000;
    const ref = 5_000 + (STIMER_MAX_CATCHUP + 3) * period + 1234;
    const next = nextPeriodicExpiry(5_000, period, ref, false);
    expect(next).to.be.greaterThan(ref);
    expect(next - ref).to.be.at.most(period);
    expect((next - 5_000) % period).to.equal(0);
  });
});

describe('StimerNextView', () => {
  it('advances an expiration only from the value its caller saw, so one of two racing deliverers wins', () => {
    const region = new SharedArrayBuffer(VP_PAGE_BYTES * 2);
    const a = new StimerNextView(region, VP_PAGE_BYTES);
    const b = new StimerNextView(region, VP_PAGE_BYTES);
    a.set(2, 12_345.5);
    expect(b.get(2)).to.equal(12_345.5);
    expect(new Float64Array(region)[((VP_PAGE_BYTES + VpPage.stimerNext) >> 3) + 2]).to.equal(12_345.5);
    expect(a.advance(2, 12_345.5, 22_345.5)).to.equal(true);
    expect(b.advance(2, 12_345.5, 22_345.5)).to.equal(false);
    expect(b.get(2)).to.equal(22_345.5);
    expect(a.get(1)).to.equal(0);
  });
});

describe('parseWorkload', () => {
  it('accepts the bare names with their defaults', () => {
    expect(parseWorkload('spin')).to.deep.equal({ name: 'spin', arg: 0 });
    expect(parseWorkload('idle')).to.deep.equal({ name: 'idle', arg: 0 });
    expect(parseWorkload('counter')).to.deep.equal({ name: 'counter', arg: 0 });
    expect(parseWorkload('sleep')).to.deep.equal({ name: 'sleep', arg: DEFAULT_SLEEP_PERIOD_MS });
    expect(parseWorkload('memdirty')).to.deep.equal({ name: 'memdirty', arg: 16 * 1024 * 1024 });
    expect(DEFAULT_MEMDIRTY_BYTES).to.equal(16 * 1024 * 1024);
  });

  it('parses arguments: sleep period in ms, memdirty size with units, counter rate', () => {
    expect(parseWorkload('sleep:5')).to.deep.equal({ name: 'sleep', arg: 5 });
    expect(parseWorkload('memdirty:4M')).to.deep.equal({ name: 'memdirty', arg: 4 * 1024 * 1024 });
    expect(parseWorkload('memdirty:512K')).to.deep.equal({ name: 'memdirty', arg: 512 * 1024 });
    expect(parseWorkload('memdirty:8192')).to.deep.equal({ name: 'memdirty', arg: 8192 });
    expect(parseWorkload('counter:250')).to.deep.equal({ name: 'counter', arg: 250 });
  });

  it('rejects an argument where none is allowed, a size that is not a whole number of pages, and out-of-range numbers', () => {
    for (const bad of ['spin:3', 'idle:1', 'memdirty:100', 'memdirty:0', 'memdirty:4097', 'sleep:0', 'sleep:10001', 'counter:0', 'counter:1000001']) {
      expect(parseWorkload(bad), bad).to.equal(null);
    }
  });

  it('rejects unknown names and malformed specs', () => {
    for (const bad of ['', 'fork', 'spin:', ':5', 'sleep:-1', 'sleep:1.5', 'sleep:5M', 'sleep:5:5', ' spin', 'memdirty:4X']) {
      expect(parseWorkload(bad), JSON.stringify(bad)).to.equal(null);
    }
  });
});
