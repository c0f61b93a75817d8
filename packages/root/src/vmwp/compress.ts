/**
 * The VMWP's page-compression pool (ARCHITECTURE's worker pool): piscina threads that deflate a
 * migration's pages at the source and inflate them at the destination, so neither side's event
 * loop (which also serves the VM's devices) does it. Made on first use, at most two threads (this
 * is a 2-core machine's share), and closed with the migration.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import type { Piscina as PiscinaType } from 'piscina';
import type { CompressResult, CompressTask } from './compress-worker.js';

/**
 * piscina, loaded when the first pool is made rather than when a VMWP starts: only a migration with
 * --compress makes one, and loading it cost each VM worker's start 38 ms of CPU with `require` and
 * 57 ms as an ES module import (20 starts each, against a bare start). It is a CommonJS package.
 */
function loadPiscina(): typeof PiscinaType {
  return (createRequire(import.meta.url)('piscina') as { Piscina: typeof PiscinaType }).Piscina;
}

const PAGE = 4096;

/** compress-worker.js next to this file, compiled; from sources, the .mjs shim that loads tsx first. */
const WORKER = import.meta.url.endsWith('.ts') ? new URL('./compress-worker.mjs', import.meta.url) : new URL('./compress-worker.js', import.meta.url);

export class PagePool {
  private readonly pool = new (loadPiscina())({ filename: WORKER.href, minThreads: 1, maxThreads: Math.max(1, Math.min(2, availableParallelism())), idleTimeout: 10_000 });

  /** Deflates `pages` (each 4096 bytes), split across the threads; null where a page does not shrink. */
  async deflate(pages: Uint8Array[]): Promise<(Uint8Array | null)[]> {
    const parts = this.split(pages);
    const done = await Promise.all(parts.map((part) => {
      const buf = new Uint8Array(part.length * PAGE);
      part.forEach((p, i) => buf.set(p, i * PAGE));
      return this.pool.run({ op: 'deflate', pages: buf, lengths: [] } satisfies CompressTask) as Promise<CompressResult>;
    }));
    const out: (Uint8Array | null)[] = [];
    for (const r of done) {
      let o = 0;
      for (const len of r.lengths) {
        out.push(len === 0 ? null : r.pages.subarray(o, o + len));
        o += len;
      }
    }
    return out;
  }

  /** Inflates compressed pages to 4096 bytes each; throws naming the first that does not inflate to exactly that. */
  async inflate(pages: Uint8Array[]): Promise<Uint8Array[]> {
    const parts = this.split(pages);
    const done = await Promise.all(parts.map((part) => {
      const lengths = part.map((p) => p.length);
      const buf = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
      let o = 0;
      for (const p of part) {
        buf.set(p, o);
        o += p.length;
      }
      return this.pool.run({ op: 'inflate', pages: buf, lengths } satisfies CompressTask) as Promise<CompressResult>;
    }));
    const out: Uint8Array[] = [];
    let base = 0;
    done.forEach((r, k) => {
      if (r.bad >= 0) throw new Error(`compressed page ${base + r.bad} of the batch does not inflate to ${PAGE} bytes`);
      for (let i = 0; i < parts[k]!.length; i++) out.push(r.pages.subarray(i * PAGE, (i + 1) * PAGE));
      base += parts[k]!.length;
    });
    return out;
  }

  /** Halves for two threads (one part for few pages). */
  private split<T>(xs: T[]): T[][] {
    if (xs.length < 16) return xs.length ? [xs] : [];
    const h = Math.ceil(xs.length / 2);
    return [xs.slice(0, h), xs.slice(h)];
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
