/**
 * Request/response over a Node IPC channel (the pipe between a parent and the child it spawned:
 * root <-> VMWP, VMWP <-> partition). The pipe doubles as a liveness link: when the parent dies
 * the child sees 'disconnect' and leaves, so a VMWP crash takes down exactly its own VM.
 */
import type { ChildProcess } from 'node:child_process';

type Port = Pick<ChildProcess, 'send' | 'on' | 'off'> | NodeJS.Process;
export type IpcHandler = (msg: Record<string, unknown>) => Promise<unknown> | unknown;

interface Envelope {
  ipc: 'req' | 'res' | 'note';
  id?: number;
  body?: Record<string, unknown>;
  ok?: boolean;
  result?: unknown;
  error?: string;
}

export class IpcRpc {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private closed = false;
  private readonly listener = (raw: unknown): void => void this.onMessage(raw as Envelope);

  constructor(
    private readonly port: Port,
    private readonly handler: IpcHandler,
    private readonly onNote: (body: Record<string, unknown>) => void = () => {},
  ) {
    (port as NodeJS.Process).on('message', this.listener);
  }

  private send(env: Envelope): void {
    if (this.closed) return;
    try {
      (this.port as NodeJS.Process).send?.(env);
    } catch {
      /* channel closed */
    }
  }

  private async onMessage(env: Envelope): Promise<void> {
    if (!env || typeof env !== 'object') return;
    if (env.ipc === 'note' && env.body) return this.onNote(env.body);
    if (env.ipc === 'res' && env.id !== undefined) {
      const p = this.pending.get(env.id);
      if (!p) return;
      this.pending.delete(env.id);
      clearTimeout(p.timer);
      if (env.ok) p.resolve(env.result);
      else p.reject(new Error(env.error ?? 'request failed'));
      return;
    }
    if (env.ipc === 'req' && env.id !== undefined && env.body) {
      try {
        const result = await this.handler(env.body);
        this.send({ ipc: 'res', id: env.id, ok: true, result });
      } catch (e) {
        this.send({ ipc: 'res', id: env.id, ok: false, error: (e as Error).message });
      }
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

  close(reason = 'the process link closed'): void {
    if (this.closed) return;
    this.closed = true;
    (this.port as NodeJS.Process).off('message', this.listener);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(reason));
    }
    this.pending.clear();
  }
}
