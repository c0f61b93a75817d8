/**
 * The integration-services framework, guest side: answer the host's negotiation with the first
 * common framework and message version, then answer every request in the same buffer with flags
 * transaction|response and the request's transaction id. Each service supplies `handle`.
 * Malformed packets are counted and dropped.
 */
import {
  decodeIcMessage, encodeIcMessage, decodeNegotiate, encodeNegotiate, negotiateVersions, IcError, IcFlags, IcMessageType, IcStatus,
  type IcHeader, type IcVersion,
} from '@hvlab/protocol';
import { PacketType, type VmbusChannel, type VmbusDriver } from '@hvlab/vmbus';
import type { IcClientState } from './state.js';

/** Integration services use 16 KiB rings per direction (REFERENCE.md). */
export const IC_RING_BYTES = 16 * 1024;
export const GUEST_FRAMEWORK_VERSIONS: IcVersion[] = [{ major: 3, minor: 0 }, { major: 1, minor: 0 }];

export interface IcReply {
  status: number;
  body: Uint8Array;
}

export abstract class IcClient implements VmbusDriver {
  abstract readonly name: string;
  abstract readonly interfaceType: string;
  abstract readonly messageType: number;
  protected abstract readonly messageVersions: IcVersion[];
  readonly ringBytes = IC_RING_BYTES;
  protected channel: VmbusChannel | null = null;
  negotiated: { framework: IcVersion; message: IcVersion } | null = null;
  readonly stats = { requests: 0, rejected: 0, attaches: 0, detaches: 0 };

  attach(channel: VmbusChannel): void {
    this.channel = channel;
    this.negotiated = null;
    this.stats.attaches++;
    channel.onPacket = (type, flags, transId, payload) => this.onPacket(type, transId, payload);
  }

  /** The channel came back open from a saved state: keep the negotiated versions. */
  reattach(channel: VmbusChannel): void {
    this.channel = channel;
    channel.onPacket = (type, flags, transId, payload) => this.onPacket(type, transId, payload);
  }

  saveIc(): IcClientState {
    const n = this.negotiated;
    return { version: 1, negotiated: n ? { framework: { ...n.framework }, message: { ...n.message } } : null };
  }

  restoreIc(s: IcClientState): void {
    const n = s.negotiated;
    this.negotiated = n ? { framework: { ...n.framework }, message: { ...n.message } } : null;
  }

  detach(): void {
    this.channel = null;
    this.negotiated = null;
    this.stats.detaches++;
  }

  get attached(): boolean {
    return this.channel?.open === true;
  }

  /** Answers one request of this service's type. */
  protected abstract handle(header: IcHeader, body: Uint8Array): IcReply;
  /** Runs after the answer to a request was sent (shutdown starts here). */
  protected afterReply(_header: IcHeader, _reply: IcReply): void {}

  private onPacket(type: number, transId: bigint, payload: Uint8Array): void {
    if (type !== PacketType.DataInband) {
      this.stats.rejected++;
      return;
    }
    let msg;
    try {
      msg = decodeIcMessage(payload);
    } catch (e) {
      if (!(e instanceof IcError)) throw e;
      this.stats.rejected++;
      return;
    }
    const h = msg.header;
    if ((h.flags & IcFlags.Request) === 0) {
      this.stats.rejected++;
      return;
    }
    this.stats.requests++;
    let reply: IcReply;
    if (h.type === IcMessageType.Negotiate) {
      reply = this.negotiate(msg.body);
    } else if (h.type !== this.messageType || !this.negotiated) {
      reply = { status: IcStatus.NotSupported, body: msg.body.slice() };
    } else {
      try {
        reply = this.handle(h, msg.body);
      } catch (e) {
        if (!(e instanceof IcError)) throw e;
        this.stats.rejected++;
        reply = { status: IcStatus.InvalidArg, body: msg.body.slice() };
      }
    }
    const answer: IcHeader = { ...h, status: reply.status, flags: IcFlags.Transaction | IcFlags.Response };
    try {
      this.channel?.send(PacketType.DataInband, 0, transId, encodeIcMessage(answer, reply.body));
    } catch {
      return; // the channel closed under us
    }
    this.afterReply(h, reply);
  }

  private negotiate(body: Uint8Array): IcReply {
    let offered;
    try {
      offered = decodeNegotiate(body);
    } catch (e) {
      if (!(e instanceof IcError)) throw e;
      return { status: IcStatus.InvalidArg, body: body.slice() };
    }
    const pick = negotiateVersions(offered, { framework: GUEST_FRAMEWORK_VERSIONS, message: this.messageVersions });
    if (!pick) return { status: IcStatus.Fail, body: encodeNegotiate({ framework: [], message: [] }) };
    this.negotiated = pick;
    return { status: IcStatus.OK, body: encodeNegotiate({ framework: [pick.framework], message: [pick.message] }) };
  }
}
