/**
 * A link probe's bulk chunks are sized from the answers (member.ts, nextProbeChunk): about one
 * answer per aimed interval, between 4 KiB and the cap, growing at most fourfold an answer.
 */
import { expect } from 'chai';
import { nextProbeChunk } from '../src/member.js';

describe('a link probe\'s chunk size', () => {
  it('aims at one answer per interval from the rate the last answer showed', () => {
    // 64 KiB answered 500 ms after the one before (1 Mbit/s): 1 s's worth is ~128 KiB.
    expect(nextProbeChunk(64 * 1024, 64 * 1024, 500, 1000)).to.equal(128 * 1024);
    // A slow link: 32 KiB in 4 s, aiming at 1 s: 8 KiB.
    expect(nextProbeChunk(32 * 1024, 32 * 1024, 4000, 1000)).to.equal(8 * 1024);
  });

  it('stays between 4 KiB and the cap, grows at most fourfold, and doubles when an answer shows no time', () => {
    expect(nextProbeChunk(32 * 1024, 32 * 1024, 60000, 1000)).to.equal(4 * 1024);
    expect(nextProbeChunk(32 * 1024, 32 * 1024, 1, 1000)).to.equal(128 * 1024);
    expect(nextProbeChunk(128 * 1024, 128 * 1024, 1, 1000)).to.equal(256 * 1024);
    expect(nextProbeChunk(128 * 1024, 128 * 1024, 1, 1000, 200 * 1024)).to.equal(200 * 1024);
    expect(nextProbeChunk(16 * 1024, 16 * 1024, 0, 1000)).to.equal(32 * 1024);
    expect(nextProbeChunk(16 * 1024, 16 * 1024, Number.NaN, 1000)).to.equal(32 * 1024);
  });
});
