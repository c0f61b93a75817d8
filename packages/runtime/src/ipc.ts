/**
 * Request/response between a VMWP and its partition process, over the socket pair spawn gives the
 * child as fd 3. The socket doubles as a liveness link: when the VMWP dies the partition process
 * sees it close and leaves, so a VMWP crash takes down exactly its own VM.
 *
 * The partition process runs the guest and is not trusted, so this is an edge where bytes enter
 * the VMWP, decoded once here: frames of a 4-byte little-endian length and a V8-serialized value
 * (Node's structured clone: typed arrays come back as typed arrays), at most IPC_FRAME_MAX_BYTES
 * each (FrameReader), and an envelope checked by decodeIpcEnvelope before anything reads it. A
 * frame over the limit, or one that does not deserialize or is not an envelope, breaks the link
 * (`onBroken`): the VMWP treats its partition as failed. (It was Node's own IPC channel with
 * `serialization: 'advanced'`, which buffers a frame of any announced length: a partition that
 * announced 2 GiB grew its VMWP without bound, and a garbage frame threw in the VMWP's loop.)
 * What a request's answer holds is checked by its caller (checkDirtyAnswer, say). An end that
 * takes no requests (the VMWP) breaks the link on one, and any end breaks it when the other has
 * left more than IPC_UNSENT_MAX_BYTES unread.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { deserialize, serialize } from 'node:v8';

export type IpcHandler = (msg: Record<string, unknown>) => Promise<unknown> | unknown;

/**
 * The largest frame either end takes: a peek's answer (at most 16 MiB of guest memory, read through
 * the partition process when its memory is private) and its envelope; a dirty bitmap of a 4 GiB VM
 * is 128 KiB.
 */
export const IPC_FRAME_MAX_BYTES = 17 * 1024 * 1024;
/** Bytes an end may have queued for the other, unread, before the link counts as broken. */
export const IPC_UNSENT_MAX_BYTES = 2 * IPC_FRAME_MAX_BYTES;
/** The longest error text an answer carries (longer is cut). */
const IPC_ERROR_MAX_CHARS = 2000;

export type IpcEnvelope =
  | { ipc: 'req'; id: number; body: Record<string, unknown> }
  | { ipc: 'res'; id: number; ok: true; result: unknown }
  | { ipc: 'res'; id: number; ok: false; error: string }
  | { ipc: 'note'; body: Record<string, unknown> };

const plainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer) && !(v instanceof SharedArrayBuffer) && !(v instanceof Map) && !(v instanceof Set) && !(v instanceof Date) && !(v instanceof Error);

/** One frame's payload as an envelope, or why it is not one. Never throws. */
export function decodeIpcEnvelope(payload: Uint8Array): IpcEnvelope | string {
  let v: unknown;
  try {
    v = deserialize(payload);
  } catch (e) {
    return `not a serialized value (${String((e as Error)?.message).slice(0, 80)})`;
  }
  if (!plainObject(v)) return 'not an object';
  const id = v.id;
  const idOk = typeof id === 'number' && Number.isSafeInteger(id) && id > 0;
  switch (v.ipc) {
    case 'req':
      if (!idOk) return 'a request needs a positive whole id';
      if (!plainObject(v.body)) return 'a request needs a body object';
      return { ipc: 'req', id: id as number, body: v.body };
    case 'note':
      if (!plainObject(v.body)) return 'a note needs a body object';
      return { ipc: 'note', body: v.body };
    case 'res':
      if (!idOk) return 'an answer needs a positive whole id';
      if (v.ok === true) return { ipc: 'res', id: id as number, ok: true, result: v.result };
      if (v.ok === false) return { ipc: 'res', id: id as number, ok: false, error: typeof v.error === 'string' ? v.error.slice(0, IPC_ERROR_MAX_CHARS) : 'request failed' };
      return 'an answer needs ok true or false';
    default:
      return 'not a request, answer or note';
  }
}

/**
 * Cuts a byte stream into frames (4-byte little-endian length, then that many bytes). Holds at
 * most one frame of at most `max` bytes; a longer announced length throws (nothing is buffered
 * for it).
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private held = 0;

  constructor(private readonly max = IPC_FRAME_MAX_BYTES) {}

  /** The frames `chunk` completes, in order. Throws IpcFrameError on a length over the limit. */
  push(chunk: Uint8Array): Buffer[] {
    if (chunk.length > 0) {
      this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.held += chunk.length;
    }
    const out: Buffer[] = [];
    for (;;) {
      if (this.held < 4) return out;
      // A length split across chunks is joined once and kept (joined at every push, a frame whose
      // first chunk was 1 byte cost a copy of all it held per read: 4.5 s for 16 MiB).
      if (this.chunks[0]!.length < 4) this.chunks = [Buffer.concat(this.chunks)];
      const head = this.chunks[0]!;
      const len = head.readUInt32LE(0);
      if (len > this.max) throw new IpcFrameError(`a frame of ${len} bytes is over the ${this.max} a frame may have`);
      if (this.held < 4 + len) return out;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      out.push(Buffer.from(all.subarray(4, 4 + len))); // a copy: the rest of `all` may be kept
      const rest = all.subarray(4 + len);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.held = rest.length;
    }
  }
}

export class IpcFrameError extends Error {
  override name = 'IpcFrameError';
}

/** One frame of `value` (serialized, length first). */
export function ipcFrame(value: unknown): Buffer {
  const payload = serialize(value);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(payload.length, 0);
  return Buffer.concat([head, payload]);
}

/** The child's end: fd 3, the socket its VMWP spawned it with (spawnPartition). */
export function parentLink(): Socket {
  return new Socket({ fd: 3, readable: true, writable: true });
}

export class IpcRpc {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private closed = false;
  private readonly reader = new FrameReader();
  private readonly onData = (chunk: Buffer): void => this.take(chunk);
  private readonly onEnd = (): void => {
    if (this.closed) return;
    this.close('the process link closed');
    this.onEnded();
  };

  /**
   * `onBroken`: the other end sent what is not a frame of an envelope (the link is closed first,
   * and `why` says what it was); the owner treats that process as failed.
   */
  constructor(
    private readonly link: Duplex,
    /** Serves the other end's requests; null: it may send none (a request breaks the link). */
    private readonly handler: IpcHandler | null,
    private readonly onNote: (body: Record<string, unknown>) => void = () => {},
    private readonly onBroken: (why: string) => void = () => {},
    /**
     * The other end closed the link (its end of the socket, or the socket failed) while this end
     * had not closed it: told once, after pending requests were failed. A process that exits closes
     * its link too, so the owner tells the two apart by whether the process goes on.
     */
    private readonly onEnded: () => void = () => {},
  ) {
    link.on('data', this.onData);
    link.on('end', this.onEnd);
    link.on('close', this.onEnd);
    link.on('error', () => {
      if (this.closed) return;
      this.close('the process link failed');
      this.onEnded();
    });
  }

  private take(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Buffer[];
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.broken((e as Error).message);
      return;
    }
    for (const f of frames) {
      const env = decodeIpcEnvelope(f);
      if (typeof env === 'string') {
        this.broken(`a frame that is no envelope: ${env}`);
        return;
      }
      void this.onMessage(env);
    }
  }

  private broken(why: string): void {
    this.close(`the process link broke: ${why}`);
    this.link.destroy();
    this.onBroken(why);
  }

  private send(env: IpcEnvelope): void {
    if (this.closed || this.link.destroyed) return;
    let frame: Buffer;
    try {
      frame = ipcFrame(env);
    } catch (e) {
      // A value that does not serialize: the request fails, not the process.
      if (env.ipc === 'res' && env.ok) this.send({ ipc: 'res', id: env.id, ok: false, error: `the answer does not serialize: ${(e as Error).message}` });
      return;
    }
    // A peer that does not read while it is answered (a partition that floods requests and never
    // reads) would queue the answers here without bound: past the limit the link is broken.
    if (this.link.writableLength + frame.length > IPC_UNSENT_MAX_BYTES) {
      this.broken(`the other end does not read (${this.link.writableLength} bytes unsent)`);
      return;
    }
    try {
      this.link.write(frame);
    } catch {
      /* closed meanwhile */
    }
  }

  private async onMessage(env: IpcEnvelope): Promise<void> {
    if (env.ipc === 'note') return this.onNote(env.body);
    if (env.ipc === 'res') {
      const p = this.pending.get(env.id);
      if (!p) return;
      this.pending.delete(env.id);
      clearTimeout(p.timer);
      if (env.ok) p.resolve(env.result);
      else p.reject(new Error(env.error));
      return;
    }
    if (!this.handler) {
      this.broken('a request, where this end takes none');
      return;
    }
    try {
      const result = await this.handler(env.body);
      this.send({ ipc: 'res', id: env.id, ok: true, result });
    } catch (e) {
      this.send({ ipc: 'res', id: env.id, ok: false, error: String((e as Error)?.message ?? e) });
    }
  }

  request<T = unknown>(body: Record<string, unknown>, timeoutMs = 10000): Promise<T> {
    if (this.closed) return Promise.reject(new Error('the process link is closed'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer to ${String(body.t)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.send({ ipc: 'req', id, body });
    });
  }

  note(body: Record<string, unknown>): void {
    this.send({ ipc: 'note', body });
  }

  /** Whether the link is closed (by close, its end, or a broken frame). */
  get isClosed(): boolean {
    return this.closed;
  }

  close(reason = 'the process link closed'): void {
    if (this.closed) return;
    this.closed = true;
    this.link.off('data', this.onData);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(reason));
    }
    this.pending.clear();
  }
}
