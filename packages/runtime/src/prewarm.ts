/**
 * Warming a process started ahead of need. A warm VMWP or a prestarted partition process has its
 * modules loaded, but the first run of a code path still pays for itself: V8 compiles functions
 * lazily on their first call, ICU loads its time-zone data on the first `toISOString`, msgpackr
 * builds its encoders on the first message. Measured in a claimed warm VMWP (inspector profile of
 * a VM start): the first log line's timestamp cost 4.5 ms, the first logger 6 ms, the first
 * msgpack hello 8.5 ms in the partition process, ZeroMQ's context and first socket 5–9 ms. Each
 * is paid here, while the process waits, on throwaway values that touch nothing shared: a logger
 * that writes nowhere, codec round trips of messages like the ones a start sends.
 *
 * A warm-up that throws is ignored (runBestEffort): warming is an optimisation and must never
 * stop the process.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import pino from 'pino';
import { decode, encode, decodeHvServerMsg, decodeChannelMessage, encodeChannelMessage, type ChannelMessage } from '@hvlab/protocol';

export function prewarmProcess(): void {
  runBestEffort([
    () => void new Date().toISOString(),
    () => {
      const sink = { write: (_s: string): void => undefined };
      const l = pino({ level: 'info', base: { pid: process.pid, host: '-', role: '-' }, timestamp: pino.stdTimeFunctions.isoTime }, sink);
      l.child({ vm: '-' }).info({ partitionId: 0, warm: true }, 'warm-up');
      l.warn({ err: new Error('warm-up') }, 'warm-up');
    },
    () => {
      // What a session's first exchange encodes and decodes: a hello, a call, their answers.
      decode(encode({ k: 'hello', pid: process.pid, partitionId: 1, ticket: 'x'.repeat(48), role: 'vmwp', vm: 'warm' }));
      decode(encode({ k: 'hc', id: 1, code: 0x40, input: { memoryBytes: 16 << 20, name: 'warm' } }));
      decodeHvServerMsg(encode({ k: 'welcome', partitionId: 2, hostId: 'warm', memoryMode: 'shared', memoryRegion: 'r', memoryBytes: 1 << 20 }));
      decodeHvServerMsg(encode({ k: 'hr', id: 1, status: 0, reps: 0, output: { partitionId: 2, token: 'x'.repeat(48) } }));
    },
    () => {
      // VMBus channel messages, as both ends of a start exchange them.
      const msgs: ChannelMessage[] = [
        { type: 'InitiateContact', versionRequested: 0x50003, targetVcpu: 0, msgSint: 2, msgVtl: 0, monitorPage1: 0n, monitorPage2: 0n },
        { type: 'RequestOffers' },
        { type: 'OpenChannel', childRelid: 1, openId: 1, ringGpadlHandle: 1, targetVp: 0, downstreamRingPageOffset: 4, userData: new Uint8Array(120) },
      ];
      for (const m of msgs) decodeChannelMessage(encodeChannelMessage(m));
    },
  ]);
}

/** Runs every step in order; one that throws neither escapes nor stops the ones after it. */
export function runBestEffort(steps: ReadonlyArray<() => void>): void {
  for (const step of steps) {
    try {
      step();
    } catch { /* best effort */ }
  }
}

type GcFunction = () => void;
let gcFunction: GcFunction | null | undefined;

/**
 * A full garbage collection now, before a phase that must not pause (a live migration's blackout),
 * where one would otherwise come due: V8 finishes the marking that allocation started, and on
 * the VM processes (--single-threaded-gc) that runs on this thread. Node exposes `gc` only with
 * --expose-gc, which a process can set for contexts made after it; the VM processes do not start
 * with it, so that their start keeps V8's code cache (see VM_PROCESS_NODE_FLAGS). Returns the
 * milliseconds it took, or null where it cannot be done (nothing happens then).
 */
export function collectGarbage(): number | null {
  if (gcFunction === undefined) {
    gcFunction = null;
    try {
      const g = (globalThis as { gc?: unknown }).gc;
      if (typeof g === 'function') gcFunction = g as GcFunction;
      else {
        setFlagsFromString('--expose-gc');
        const made: unknown = runInNewContext('gc');
        if (typeof made === 'function') gcFunction = made as GcFunction;
      }
    } catch {
      gcFunction = null;
    }
  }
  if (!gcFunction) return null;
  const t0 = performance.now();
  // Without arguments: a full, synchronous collection (Node 20's `gc({ type: 'major' })` ran a scavenge).
  gcFunction();
  return performance.now() - t0;
}
