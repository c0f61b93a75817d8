/**
 * VP threads started ahead of need: a worker thread that has loaded the VP code and waits for its
 * VpStart, so a guest's VPs start without waiting for a thread to load. Kept apart from the kernel
 * (it imports nothing but worker_threads) so that the partition process's entry (boot.ts) can start
 * one before it loads anything else, and the thread loads its code while the process loads its own.
 */
import { Worker } from 'node:worker_threads';

/** The VP thread's entry: beside the sources, the compiled module or, in a bundle (whose launcher this URL is then: scripts/bundle.mjs), its launcher. */
export const VP_THREAD_ENTRY = import.meta.url.endsWith('.ts') ? new URL('./vp-thread.mjs', import.meta.url)
  : import.meta.url.endsWith('.cjs') ? new URL('./vp.cjs', import.meta.url)
    : new URL('./vp.js', import.meta.url);

const spareVpThreads: Worker[] = [];

/** What a spare VP thread posts once its code has loaded and it waits for its VpStart (vp.ts). */
export const VP_THREAD_LOADED = 'loaded';

/** Starts `n` VP threads now. */
export function prestartVpThreads(n: number): void {
  for (let i = 0; i < n; i++) {
    const w = new Worker(VP_THREAD_ENTRY, { workerData: { prestart: true }, name: 'vp-spare' });
    w.unref();
    // A spare that fails to load, or ends, is dropped; the kernel then creates a thread of its own.
    const drop = (): void => {
      const i = spareVpThreads.indexOf(w);
      if (i >= 0) spareVpThreads.splice(i, 1);
    };
    w.once('error', drop);
    w.once('exit', drop);
    spareVpThreads.push(w);
  }
}

let first = false;
/** What the first VP thread said of its code cache (runtime/src/code-cache.ts), once it has loaded. */
let firstCodeCache: string | null = null;

/** The code-cache status the process's first VP thread reported; null before it loaded, or without a cache. */
export function firstVpThreadCodeCache(): string | null {
  return firstCodeCache;
}

/**
 * The process's first spare VP thread, once (the entry starts it; main.ts again, as a no-op, or
 * when it is the entry). Resolves once that thread has loaded its code (Node's start-up of the
 * thread, its module loader and the VP code, all compiled as they are by default), has failed, or
 * has exited; at once on a second call.
 */
export function prestartFirstVpThread(): Promise<void> {
  if (first) return Promise.resolve();
  first = true;
  prestartVpThreads(1);
  const w = spareVpThreads[0];
  if (!w) return Promise.resolve();
  // The thread is unref'd (a spare keeps no process alive). While this waits, its 'message'
  // listener holds the thread's port, and so the process; removed, it holds nothing again, and a
  // kernel that took the thread meanwhile holds it as it does any (spare.test.ts checks both).
  return new Promise<void>((resolve) => {
    const loaded = (m: { t?: unknown; codeCache?: unknown } | null): void => {
      if (m?.t !== VP_THREAD_LOADED) return;
      if (typeof m.codeCache === 'string' && m.codeCache.length <= 16) firstCodeCache = m.codeCache;
      done();
    };
    const done = (): void => {
      w.off('message', loaded).off('error', done).off('exit', done);
      resolve();
    };
    w.on('message', loaded).on('error', done).on('exit', done);
  });
}

/** Takes a spare VP thread (it is the caller's from now on), or null when none is left. */
export function takeSpareVpThread(): Worker | null {
  return spareVpThreads.shift() ?? null;
}
