/**
 * A thread of the VMWP's page-compression pool (compress.ts): deflates or inflates the pages of a
 * batch, handed over as one buffer and handed back the same way.
 *   deflate: `pages` is n × 4096 bytes → the compressed pages one after another, with their lengths
 *            (0 where a page does not shrink enough: it goes raw);
 *   inflate: `pages` holds compressed pages of `lengths` → n × 4096 bytes, or the index of the
 *            first page that does not inflate to exactly 4096 bytes.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';

const PAGE = 4096;
/** A compressed page must save at least this much to be sent compressed. */
const MIN_SAVING = 64;

export interface CompressTask {
  op: 'deflate' | 'inflate';
  pages: Uint8Array;
  lengths: number[];
}
export type CompressResult = { pages: Uint8Array; lengths: number[]; bad: number };

export default function run(t: CompressTask): CompressResult {
  if (t.op === 'deflate') {
    const n = t.pages.length / PAGE;
    const parts: Buffer[] = [];
    const lengths: number[] = [];
    for (let i = 0; i < n; i++) {
      const z = deflateRawSync(t.pages.subarray(i * PAGE, (i + 1) * PAGE), { level: 1 });
      if (z.length <= PAGE - MIN_SAVING) {
        parts.push(z);
        lengths.push(z.length);
      } else lengths.push(0);
    }
    const out = new Uint8Array(Buffer.concat(parts));
    return { pages: out, lengths, bad: -1 };
  }
  const out = new Uint8Array(t.lengths.length * PAGE);
  let o = 0;
  for (let i = 0; i < t.lengths.length; i++) {
    const len = t.lengths[i]!;
    let page: Buffer;
    try {
      page = inflateRawSync(t.pages.subarray(o, o + len), { maxOutputLength: PAGE });
    } catch {
      return { pages: new Uint8Array(0), lengths: [], bad: i };
    }
    if (page.length !== PAGE) return { pages: new Uint8Array(0), lengths: [], bad: i };
    out.set(page, i * PAGE);
    o += len;
  }
  return { pages: out, lengths: [], bad: -1 };
}
