/**
 * Heartbeat provider: asks the guest every `intervalMs` with a sequence number the guest
 * increments. One request is outstanding at a time (a frozen guest is not flooded). The service is
 * "OK" while answers keep coming, "LostCommunication" once none came for `lostAfterMs` after
 * contact, "NoContact" before negotiation or while the channel is closed.
 */
import { decodeHeartbeat, encodeHeartbeat, IcGuid, IcMessageType, IcStatus, IcError, type IcVersion } from '@hvlab/protocol';
import { IcProvider, type IcLog, type IcStatusText } from './provider.js';

export interface HeartbeatOptions {
  intervalMs?: number;
  lostAfterMs?: number;
}

export class HeartbeatProvider extends IcProvider {
  readonly service = 'heartbeat' as const;
  readonly interfaceType = IcGuid.heartbeat;
  readonly messageType = IcMessageType.Heartbeat;
  protected readonly messageVersions: IcVersion[] = [{ major: 3, minor: 0 }, { major: 1, minor: 0 }];
  sequence = 0n;
  private timer: NodeJS.Timeout | null = null;
  private outstanding = false;
  private readonly intervalMs: number;
  private readonly lostAfterMs: number;

  constructor(log: IcLog, opts: HeartbeatOptions = {}) {
    super(log);
    this.intervalMs = opts.intervalMs ?? 1000;
    this.lostAfterMs = opts.lostAfterMs ?? Math.max(3000, this.intervalMs * 3);
  }

  override status(): IcStatusText {
    if (!this.negotiated || !this.isOpen) return 'NoContact';
    const last = this.lastAnswerAt ?? 0;
    return Date.now() - last <= this.lostAfterMs ? 'OK' : 'LostCommunication';
  }

  protected override onNegotiated(): void {
    this.beat();
    this.timer = setInterval(() => this.beat(), this.intervalMs);
    this.timer.unref?.();
  }

  protected override onClosed(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.outstanding = false;
  }

  private beat(): void {
    if (this.outstanding || !this.isOpen) return;
    this.outstanding = true;
    const asked = this.sequence;
    this.request(IcMessageType.Heartbeat, encodeHeartbeat(asked), 0)
      .then((a) => {
        if (a.header.status !== IcStatus.OK) return;
        try {
          const seq = decodeHeartbeat(a.body).sequence;
          // The guest increments what it was sent; anything else is not a heartbeat answer.
          if (seq === asked + 1n) this.sequence = seq;
        } catch (e) {
          if (!(e instanceof IcError)) throw e;
        }
      })
      .catch(() => undefined)
      .finally(() => {
        this.outstanding = false;
      });
  }
}
