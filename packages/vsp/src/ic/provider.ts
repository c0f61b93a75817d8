/**
 * The integration-services framework, host side: every IC channel starts with a negotiation the
 * host sends (framework and message versions it offers, newest first; the guest answers with the
 * first common pair), then the host sends every request and the guest answers in the same buffer
 * with flags transaction|response. Requests and answers travel as DATA_INBAND packets; an answer is
 * matched to its request by the packet's transaction id. Anything undecodable is counted and
 * dropped: a guest cannot hurt the provider, only its own service.
 */
import {
  decodeIcMessage, encodeIcMessage, decodeNegotiate, encodeNegotiate, icDecodedRanges, IcError, IcFlags, IcMessageType, IcStatus,
  type ByteRanges, type IcHeader, type IcVersion, type Negotiate,
} from '@hvlab/protocol';
import { PacketType, type VmbusChannel, type VmbusDevice } from '@hvlab/vmbus';
import { randomUUID } from 'node:crypto';
import type { IcProviderState } from './state.js';
import { icTicker } from './ticker.js';

export type IcServiceName = 'heartbeat' | 'shutdown' | 'timesync' | 'kvp';
export type IcStatusText = 'OK' | 'NoContact' | 'LostCommunication';

/** How long the host waits for the guest's answer to a negotiation, and then until it asks again. */
export const NEGOTIATE_TIMEOUT_MS = 10000;
export const NEGOTIATE_RETRY_MS = 2000;

/** How long a request restored from a saved state waits for its answer. */
export const RESTORED_ANSWER_TIMEOUT_MS = 10000;

export const FRAMEWORK_VERSIONS: IcVersion[] = [{ major: 3, minor: 0 }, { major: 1, minor: 0 }];

export class IcRequestError extends Error {
  override name = 'IcRequestError';
  constructor(message: string, readonly status: number | null = null) {
    super(message);
  }
}

export interface IcLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
}

export interface IcAnswer {
  header: IcHeader;
  body: Uint8Array;
}

interface Pending {
  type: number;
  resolve: (a: IcAnswer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

export abstract class IcProvider implements VmbusDevice {
  abstract readonly service: IcServiceName;
  abstract readonly interfaceType: string;
  abstract readonly messageType: number;
  /** Message versions offered, newest first. */
  protected abstract readonly messageVersions: IcVersion[];
  /** A fresh UUID unless the device model gives the provider its stable instance id. */
  interfaceInstance: string = randomUUID();
  /** How long a negotiation waits for the guest's answer before it is tried again (tests shorten it). */
  negotiateTimeoutMs = NEGOTIATE_TIMEOUT_MS;
  /** How long after a failed negotiation it is tried again (tests shorten it). */
  negotiateRetryMs = NEGOTIATE_RETRY_MS;
  protected channel: VmbusChannel | null = null;
  negotiated: { framework: IcVersion; message: IcVersion } | null = null;
  /** When the guest last answered anything on this channel. */
  lastAnswerAt: number | null = null;
  readonly stats = { requests: 0, answers: 0, rejected: 0, opens: 0 };
  private readonly pending = new Map<bigint, Pending>();
  /** Stops polled mode (see pollAnswers); null when answers signal. */
  private stopPolling: (() => void) | null = null;
  private nextTransId = 1n;
  private nextIcTransaction = 0;

  constructor(protected readonly log: IcLog) {}

  get name(): string {
    return this.service;
  }

  /** The bytes of an IC packet the receiver decodes (VmbusDevice.decodedRanges): where corruption lands. */
  decodedRanges(payload: Uint8Array): ByteRanges {
    return icDecodedRanges(payload, this.decodedBodyRanges);
  }

  /** The bytes of a message body of this service that its decoder reads; undefined: all of it. */
  protected readonly decodedBodyRanges: ((body: Uint8Array) => ByteRanges) | undefined = undefined;

  get isOpen(): boolean {
    return this.channel?.open === true;
  }

  status(): IcStatusText {
    return this.negotiated && this.isOpen ? 'OK' : 'NoContact';
  }

  /** The service's line in `vm ic`: status and negotiated version, plus what the service adds. */
  statusInfo(): Record<string, unknown> {
    const n = this.negotiated;
    return { status: this.status(), version: n ? `${n.message.major}.${n.message.minor}` : null, rejected: this.stats.rejected, ...this.statusExtra() };
  }

  protected statusExtra(): Record<string, unknown> {
    return {};
  }

  /** Whether the guest's answers are read on the worker's ticks rather than signalled (pollAnswers). */
  protected get polled(): boolean {
    return this.stopPolling !== null;
  }

  /**
   * For a service whose requests are periodic (heartbeat, time sync), after its first answer: the host's
   * side of the ring keeps interrupt_mask set, so the guest's answers wake nobody (a signal
   * through the hypervisor, the worker's watcher thread and its event loop: three of the ~8
   * wake-ups of an idle VM's heartbeat); they are read at each tick of the worker's ticker, before
   * the next requests go, and when a service reads its status. An answer counts as heard when it
   * is read: at most a tick after it came, so a service judges silence over a tick more (see
   * `pollSlackMs`). Over a remote transport (no rings) answers come as they arrive.
   */
  protected pollAnswers(): void {
    const ch = this.channel;
    if (!ch || this.stopPolling || !ch.setPolled(true)) return;
    const stop = icTicker.poll(() => {
      if (this.channel === ch) ch.poll();
    });
    this.stopPolling = () => {
      stop();
      ch.setPolled(false);
    };
  }

  /**
   * How much later than it came an answer may be read: the given period (the service's own, which
   * the worker's ticks are never further apart than) when polled, 0 otherwise. A request waits this
   * much longer for its answer, so that one that came just before its time is not thrown away.
   */
  protected pollSlackMs(periodMs: number): number {
    return this.stopPolling ? periodMs : 0;
  }

  /** Reads what the guest answered since the last tick (polled mode; nothing otherwise). */
  protected readAnswers(): void {
    if (this.stopPolling) this.channel?.poll();
  }

  private endPolling(): void {
    const stop = this.stopPolling;
    this.stopPolling = null;
    stop?.();
  }

  open(channel: VmbusChannel): void {
    this.endPolling();
    this.channel = channel;
    this.negotiated = null;
    this.stats.opens++;
    channel.onPacket = (type, flags, transId, payload) => this.onPacket(type, transId, payload);
    this.negotiate(channel, 0);
  }

  /**
   * Negotiates on `channel`. A failure (no answer, or one that does not decode: a lossy channel, an
   * injected VMBus fault) is tried again every negotiateRetryMs while the channel stays open, so a
   * negotiation that met a fault does not leave the service without contact until the next open.
   */
  private negotiate(channel: VmbusChannel, failures: number): void {
    const offer: Negotiate = { framework: FRAMEWORK_VERSIONS, message: this.messageVersions };
    this.request(IcMessageType.Negotiate, encodeNegotiate(offer), this.negotiateTimeoutMs)
      .then((a) => {
        if (a.header.status !== IcStatus.OK) throw new IcRequestError(`the guest found no common ${this.service} version`, a.header.status);
        const n = decodeNegotiate(a.body);
        const fw = n.framework[0];
        const msg = n.message[0];
        const known = (list: IcVersion[], v: IcVersion | undefined): boolean => !!v && list.some((x) => x.major === v.major && x.minor === v.minor);
        if (!known(FRAMEWORK_VERSIONS, fw) || !known(this.messageVersions, msg)) throw new IcRequestError(`the guest chose a ${this.service} version the host did not offer`);
        this.negotiated = { framework: fw!, message: msg! };
        this.log.info({ service: this.service, framework: `${fw!.major}.${fw!.minor}`, message: `${msg!.major}.${msg!.minor}` }, 'integration service negotiated');
        this.onNegotiated();
      })
      .catch((e) => {
        if (this.channel !== channel || !channel.open || this.negotiated) return;
        // Logged once per opening: a guest without the service would otherwise fill the log.
        if (failures === 0) this.log.warn({ service: this.service, err: (e as Error).message }, 'integration service negotiation failed; trying again while the channel is open');
        const t = setTimeout(() => {
          if (this.channel === channel && channel.open && !this.negotiated) this.negotiate(channel, failures + 1);
        }, this.negotiateRetryMs);
        t.unref?.();
      });
  }

  close(): void {
    this.endPolling();
    this.channel = null;
    this.negotiated = null;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new IcRequestError(`the ${this.service} channel closed`));
    }
    this.pending.clear();
    this.onClosed();
  }

  protected onNegotiated(): void {}
  protected onClosed(): void {}

  /**
   * The channel came back open from a saved state: keep the negotiated versions and the requests
   * in flight (restored by `restoreIc`), and carry on as after negotiation — no new negotiation.
   */
  reopen(channel: VmbusChannel): void {
    this.endPolling();
    this.channel = channel;
    channel.onPacket = (type, flags, transId, payload) => this.onPacket(type, transId, payload);
    // A restored guest that answered before the save counts as heard from now, not never.
    if (this.negotiated) {
      this.lastAnswerAt = Date.now();
      this.onNegotiated();
    }
  }

  /** Every answer to a request of this session, as it is read (before its promise settles). */
  protected onAnswer(_type: number, _answer: IcAnswer): void {}

  /** An answer to a request made before the VM was saved (its caller is gone); services that care override this. */
  protected onRestoredAnswer(_type: number, _answer: IcAnswer): void {}

  /** A request made before the save that was not answered within its time after the restore. */
  protected onRestoredTimeout(_type: number): void {}

  /** The framework's saved state (plain data). Does not change the provider. */
  saveIc(): IcProviderState {
    return {
      version: 1,
      negotiated: this.negotiated ? { framework: { ...this.negotiated.framework }, message: { ...this.negotiated.message } } : null,
      nextTransId: this.nextTransId.toString(),
      nextIcTransaction: this.nextIcTransaction & 0xff,
      pending: [...this.pending.entries()].map(([transId, p]) => ({ transId: transId.toString(), type: p.type })),
      opens: this.stats.opens,
    };
  }

  /** Puts a decoded framework state back into a fresh provider, before `reopen`. */
  restoreIc(s: IcProviderState): void {
    this.negotiated = s.negotiated ? { framework: { ...s.negotiated.framework }, message: { ...s.negotiated.message } } : null;
    this.nextTransId = BigInt(s.nextTransId);
    this.nextIcTransaction = s.nextIcTransaction;
    this.stats.opens = s.opens;
    for (const p of this.pending.values()) if (p.timer) clearTimeout(p.timer);
    this.pending.clear();
    for (const e of s.pending) {
      const entry: Pending = {
        type: e.type,
        resolve: (a) => this.onRestoredAnswer(e.type, a),
        reject: () => undefined,
        timer: null,
      };
      entry.timer = setTimeout(() => {
        if (this.pending.get(BigInt(e.transId)) !== entry) return;
        this.pending.delete(BigInt(e.transId));
        this.onRestoredTimeout(e.type);
      }, RESTORED_ANSWER_TIMEOUT_MS);
      entry.timer.unref?.();
      this.pending.set(BigInt(e.transId), entry);
    }
  }

  /** Sends a request; resolves with the guest's answer. `timeoutMs` 0 waits for as long as the channel is open. */
  protected request(type: number, body: Uint8Array, timeoutMs: number): Promise<IcAnswer> {
    const ch = this.channel;
    if (!ch?.open) return Promise.reject(new IcRequestError(`the ${this.service} integration service is not connected`));
    const transId = this.nextTransId++;
    const fw = this.negotiated?.framework ?? FRAMEWORK_VERSIONS[0];
    const msg = this.negotiated?.message ?? this.messageVersions[0];
    const header: IcHeader = { framework: fw, message: msg, type, status: 0, transactionId: this.nextIcTransaction++ & 0xff, flags: IcFlags.Transaction | IcFlags.Request };
    return new Promise<IcAnswer>((resolve, reject) => {
      const p: Pending = { type, resolve, reject, timer: null };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(transId);
          // The request stays in the channel: a guest that gets it late still carries it out (a KVP set lands).
          reject(new IcRequestError(`the guest did not answer the ${this.service} request within ${timeoutMs % 1000 === 0 ? `${timeoutMs / 1000} s` : `${timeoutMs} ms`}; it was sent, so the guest may still carry it out`));
        }, timeoutMs);
      }
      this.pending.set(transId, p);
      try {
        this.stats.requests++;
        ch.send(PacketType.DataInband, 0, transId, encodeIcMessage(header, body));
      } catch (e) {
        this.pending.delete(transId);
        if (p.timer) clearTimeout(p.timer);
        reject(e);
      }
    });
  }

  private onPacket(type: number, transId: bigint, payload: Uint8Array): void {
    const p = this.pending.get(transId);
    if (type !== PacketType.DataInband || !p) {
      this.stats.rejected++;
      return;
    }
    let msg: { header: IcHeader; body: Uint8Array };
    try {
      msg = decodeIcMessage(payload);
    } catch (e) {
      if (!(e instanceof IcError)) throw e;
      this.stats.rejected++;
      return;
    }
    const h = msg.header;
    if (h.type !== p.type || (h.flags & IcFlags.Response) === 0) {
      this.stats.rejected++;
      return;
    }
    this.pending.delete(transId);
    if (p.timer) clearTimeout(p.timer);
    this.stats.answers++;
    this.lastAnswerAt = Date.now();
    // The body is a view into the ring: copy before it outlives this call.
    const answer = { header: h, body: msg.body.slice() };
    this.onAnswer(p.type, answer);
    p.resolve(answer);
  }
}
