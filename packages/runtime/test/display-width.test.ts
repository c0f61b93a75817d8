/**
 * The columns a string takes on a terminal (display-width.ts), which the CLI's tables pad by:
 * wide characters 2, marks and zero-width characters 0, emoji sequences as one emoji.
 */
import { expect } from 'chai';
import { displayWidth, padEndColumns } from '../src/index.js';

describe('the display width of a string', () => {
  it('counts ASCII and other narrow letters one column each', () => {
    expect(displayWidth('')).to.equal(0);
    expect(displayWidth('web-01')).to.equal(6);
    expect(displayWidth('Grüße')).to.equal(5);
    expect(displayWidth('Ωμέγα')).to.equal(5);
    expect(displayWidth('½ ©')).to.equal(3);
  });

  it('counts East Asian Wide and Fullwidth characters two columns each', () => {
    expect(displayWidth('網站')).to.equal(4);
    expect(displayWidth('ウェブ')).to.equal(6);
    expect(displayWidth('서버')).to.equal(4);
    expect(displayWidth('ＡＢ')).to.equal(4); // fullwidth Latin
    expect(displayWidth('、。')).to.equal(4);
    expect(displayWidth('𠀋')).to.equal(2); // outside the BMP: two UTF-16 units, one character
    expect(displayWidth('vm-網')).to.equal(5);
    expect(displayWidth('ｶﾀｶﾅ')).to.equal(4); // halfwidth katakana stays narrow
  });

  it('counts an emoji two columns, however many code points make it', () => {
    expect(displayWidth('🚀')).to.equal(2);
    expect(displayWidth('ok 👍')).to.equal(5);
    expect(displayWidth('👍🏽')).to.equal(2); // with a skin-tone modifier
    expect(displayWidth('👨‍👩‍👧')).to.equal(2); // joined with ZERO WIDTH JOINERs
    expect(displayWidth('🇯🇵🇩🇪')).to.equal(4); // two flags, each a pair of regional indicators
    expect(displayWidth('❤')).to.equal(1); // text presentation by default
    expect(displayWidth('❤️')).to.equal(2); // with VARIATION SELECTOR-16
    expect(displayWidth('1️⃣')).to.equal(2); // a keycap
  });

  it('counts combining marks and zero-width characters nothing', () => {
    expect(displayWidth('e\u0301')).to.equal(1); // e + COMBINING ACUTE ACCENT
    expect(displayWidth('a\u200bb')).to.equal(2); // ZERO WIDTH SPACE
    expect(displayWidth('\u200d\u2060\ufeff')).to.equal(0); // joiner, word joiner, BOM
    expect(displayWidth('\u1100\u1161\u11a8')).to.equal(2); // a Hangul syllable from conjoining jamo
    expect(displayWidth('ก\u0e31')).to.equal(1); // Thai with a combining vowel
    expect(displayWidth('\x1b\n')).to.equal(0); // control characters (tables show them escaped)
  });

  it('pads to a number of columns, not of UTF-16 code units', () => {
    expect(padEndColumns('網站', 6)).to.equal('網站  ');
    expect(padEndColumns('🚀', 4)).to.equal('🚀  ');
    expect(padEndColumns('web', 6)).to.equal('web   ');
    expect(padEndColumns('toolong', 3)).to.equal('toolong');
  });
});
