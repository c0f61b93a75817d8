/**
 * The first line one of hvlab's daemons (the hypervisor, a cluster's fabric, a nemesis) writes on
 * its stdout when it starts: `ready`, or a sentence saying why not. Its starter reads that line and
 * nothing more, through `firstLine`: at most FIRST_LINE_MAX_BYTES (a child that writes more
 * without a newline is answered as such, not buffered for ever), decoded as UTF-8 with its control
 * characters escaped (printable), since the line ends up in an error message on a terminal.
 */
import type { ChildProcess } from 'node:child_process';

export const FIRST_LINE_MAX_BYTES = 4096;
/** How long the line is waited for after the child's exit (see firstLine). */
const EXIT_DRAIN_MS = 500;

export type FirstLine =
  | { kind: 'line'; line: string }
  /** The child exited first; `partial`: what it wrote of a line before (may be ''). */
  | { kind: 'exited'; why: string; partial: string }
  | { kind: 'timeout' }
  | { kind: 'too-long' }
  /** `signal` was aborted first (a Ctrl-C of the starter). */
  | { kind: 'aborted' };

/**
 * `s` with its control characters shown as escapes (\n, \t, \x1b, …), for a terminal: what another
 * process wrote (a guest's KVP value, a daemon's first line) is shown, never acted on.
 */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? '\\t' : c === '\r' ? '\\r' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** A line's bytes as text: UTF-8 (never throws), a trailing CR dropped, control characters escaped (printable). */
export function lineText(bytes: Uint8Array): string {
  let s = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  if (s.endsWith('\r')) s = s.slice(0, -1);
  return printable(s);
}

/** Collects a stream's bytes up to its first newline (`push` says what it has once it knows). */
export class FirstLineReader {
  private readonly held: Buffer[] = [];
  private size = 0;
  constructor(private readonly maxBytes = FIRST_LINE_MAX_BYTES) {}

  /** A chunk more: the line once its newline came, 'too-long' past the limit, null while it waits. */
  push(chunk: Uint8Array): { line: string } | 'too-long' | null {
    const nl = chunk.indexOf(0x0a);
    const take = nl >= 0 ? nl : chunk.byteLength;
    if (this.size + take > this.maxBytes) return 'too-long';
    this.held.push(Buffer.from(chunk.subarray(0, take)));
    this.size += take;
    return nl >= 0 ? { line: lineText(Buffer.concat(this.held)) } : null;
  }

  /** What came of a line so far. */
  partial(): string {
    return lineText(Buffer.concat(this.held));
  }
}

/**
 * The first line of `child`'s stdout (a pipe), or why there is none: it exited without writing a
 * whole one (what it wrote of one is `partial`), `timeoutMs` passed, the line ran past
 * FIRST_LINE_MAX_BYTES, or `signal` was aborted. Its listeners are gone when it settles; the caller
 * decides what becomes of the child and its stream.
 */
export function firstLine(child: ChildProcess, timeoutMs: number, maxBytes = FIRST_LINE_MAX_BYTES, signal?: AbortSignal): Promise<FirstLine> {
  const out = child.stdout;
  if (!out) return Promise.resolve({ kind: 'exited', why: 'it has no stdout to read', partial: '' });
  if (signal?.aborted) return Promise.resolve({ kind: 'aborted' });
  const reader = new FirstLineReader(maxBytes);
  return new Promise<FirstLine>((resolve) => {
    let drain: NodeJS.Timeout | undefined;
    const settle = (r: FirstLine): void => {
      clearTimeout(timer);
      clearTimeout(drain);
      out.off('data', onData);
      out.off('end', onEnd);
      child.off('exit', onExit);
      signal?.removeEventListener('abort', onAbort);
      resolve(r);
    };
    const onAbort = (): void => settle({ kind: 'aborted' });
    let exitWhy: string | null = null;
    const onEnd = (): void => {
      if (exitWhy !== null) settle({ kind: 'exited', why: exitWhy, partial: reader.partial() });
    };
    const onData = (d: Buffer | string): void => {
      const r = reader.push(typeof d === 'string' ? Buffer.from(d) : d);
      if (r === 'too-long') settle({ kind: 'too-long' });
      else if (r) settle({ kind: 'line', line: r.line });
    };
    // 'exit' can come before the last of what the child wrote has been read: what is still in the
    // pipe is read until its end (or for EXIT_DRAIN_MS, should a grandchild hold the pipe open).
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      exitWhy = signal ?? `exit code ${code}`;
      if (out.readableEnded) return onEnd();
      drain = setTimeout(onEnd, EXIT_DRAIN_MS);
    };
    const timer = setTimeout(() => settle({ kind: 'timeout' }), timeoutMs);
    out.on('data', onData);
    out.on('end', onEnd);
    child.on('exit', onExit);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
