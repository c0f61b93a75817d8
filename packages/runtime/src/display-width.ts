/**
 * How many columns of a terminal a string takes, for tables padded to line up: a CJK character or
 * an emoji takes two, a combining mark or a zero-width character none. String.length counts
 * UTF-16 code units, so a VM named 網站 (two units, four columns) or a KVP value with an emoji
 * (two units, two columns) pushed every column after it out of line.
 *
 * What terminals do (as wcwidth and xterm's tables): East Asian Wide and Fullwidth characters
 * (Unicode's EastAsianWidth.txt, W and F) and emoji shown as emoji (Emoji_Presentation, or any emoji
 * followed by VARIATION SELECTOR-16) are 2; nonspacing and enclosing marks, format characters
 * (zero-width space, joiners) and Hangul's medial and final jamo are 0; the pieces that join into
 * the emoji before them (after a ZERO WIDTH JOINER, a skin-tone modifier, a flag's second regional
 * indicator) add nothing; the rest is 1. Control characters count 0: tables show them escaped
 * (printable), and what prints them raw is not laid out.
 */

/** East Asian Wide (W) and Fullwidth (F) ranges, inclusive and sorted (emoji are found by their property). */
const WIDE_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0x1100, 0x115f], // Hangul Jamo initial consonants
  [0x2329, 0x232a], // angle brackets
  [0x2e80, 0x303e], // CJK radicals, Kangxi radicals, ideographic description, CJK symbols and punctuation
  [0x3041, 0x33ff], // Hiragana, Katakana, Bopomofo, Hangul compatibility jamo, Kanbun, CJK strokes, enclosed CJK, CJK compatibility
  [0x3400, 0x4dbf], // CJK unified ideographs extension A
  [0x4e00, 0x9fff], // CJK unified ideographs
  [0xa000, 0xa4cf], // Yi
  [0xa960, 0xa97f], // Hangul Jamo extended A
  [0xac00, 0xd7a3], // Hangul syllables
  [0xf900, 0xfaff], // CJK compatibility ideographs
  [0xfe10, 0xfe19], // vertical forms
  [0xfe30, 0xfe6f], // CJK compatibility forms, small form variants
  [0xff00, 0xff60], // fullwidth forms
  [0xffe0, 0xffe6], // fullwidth signs
  [0x16fe0, 0x16fe4], [0x16ff0, 0x16ff1], // ideographic symbols
  [0x17000, 0x18cff], [0x18d00, 0x18d08], // Tangut, Khitan
  [0x1aff0, 0x1b2ff], // Kana extended and supplement, Nushu
  [0x1f200, 0x1f202], [0x1f210, 0x1f23b], [0x1f240, 0x1f248], [0x1f250, 0x1f251], [0x1f260, 0x1f265], // enclosed ideographic supplement
  [0x20000, 0x2fffd], [0x30000, 0x3fffd], // CJK unified ideographs extensions B and on
];

function inWideRange(cp: number): boolean {
  let lo = 0;
  let hi = WIDE_RANGES.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [a, b] = WIDE_RANGES[mid]!;
    if (cp < a) hi = mid - 1;
    else if (cp > b) lo = mid + 1;
    else return true;
  }
  return false;
}

const ZERO_WIDTH = /^[\p{Mn}\p{Me}\p{Cf}]$/u;
const EMOJI = /^\p{Emoji}$/u;
const EMOJI_PRESENTATION = /^\p{Emoji_Presentation}$/u;
const EMOJI_MODIFIER = /^\p{Emoji_Modifier}$/u;
const ZWJ = 0x200d;
const VS16 = 0xfe0f;
const SOFT_HYPHEN = 0xad;
const isRegionalIndicator = (cp: number): boolean => cp >= 0x1f1e6 && cp <= 0x1f1ff;

/** Columns `s` takes on a terminal (see the module comment). */
export function displayWidth(s: string): number {
  let width = 0;
  // The code point before, and what it was counted as (emoji it may grow or join).
  let prev = -1;
  let prevNarrowEmoji = false;
  let prevEmoji = false;
  let flagOpen = false;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    const after = prev;
    prev = cp;
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
      prevNarrowEmoji = prevEmoji = flagOpen = false;
      continue;
    }
    if (cp === VS16) {
      // An emoji shown as text (❤) turns into its emoji form, two columns.
      if (prevNarrowEmoji) width += 1;
      prevNarrowEmoji = false;
      continue;
    }
    if ((ZERO_WIDTH.test(ch) && cp !== SOFT_HYPHEN) || (cp >= 0x1160 && cp <= 0x11ff)) continue;
    // Digits, # and * are emoji too: text unless VS16 follows (a keycap).
    const emoji = EMOJI.test(ch);
    if (emoji && (after === ZWJ || (prevEmoji && EMOJI_MODIFIER.test(ch)))) continue; // part of the emoji before
    if (isRegionalIndicator(cp)) {
      // A flag is a pair: two columns for both.
      if (!flagOpen) width += 2;
      flagOpen = !flagOpen;
      prevEmoji = true;
      prevNarrowEmoji = false;
      continue;
    }
    flagOpen = false;
    const wide = inWideRange(cp) || EMOJI_PRESENTATION.test(ch);
    width += wide ? 2 : 1;
    prevEmoji = emoji;
    prevNarrowEmoji = emoji && !wide;
  }
  return width;
}

/** `s` and spaces after it up to `width` columns (as padEnd, counting columns). */
export function padEndColumns(s: string, width: number): string {
  const w = displayWidth(s);
  return w >= width ? s : s + ' '.repeat(width - w);
}
