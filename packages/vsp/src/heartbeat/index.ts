/**
 * Heartbeat provider: asks the guest every `intervalMs` with a sequence number the guest
 * increments. The defaults are Hyper-V's (Msvm_HeartbeatComponentSettingData: Interval 2000 ms,
 * Latency 1000 ms, ErrorThreshold 2): the service turns LostCommunication once ErrorThreshold
 * beats went unanswered and the next one's Latency has passed, 5 s after the last answer. One
 * request is outstanding at a time (a frozen guest is not flooded); one not answered within
 * `lostAfterMs` is given up and asked again, so a request or answer that was lost (a lossy
 * channel, an injected fault) does not silence the heartbeat for good. The service is
 * "OK" while answers keep coming, "LostCommunication" once none came for `lostAfterMs` after
 * contact, "NoContact" before negotiation or while the channel is closed.
 */
import { IcGuid, IcMessageType, IcStatus, IcError, type IcVersion } from '@hvlab/protocol';
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_INTERVAL_MS, heartbeatLostAfterMs } from '@hvlab/protocol/heartbeat';
import type { DeviceContext, VirtualDevice } from '../device.js';
import { icDevice, type IcService } from '../ic/device.js';
import { icTicker } from '../ic/ticker.js';
import { IcProvider, type IcAnswer, type IcLog, type IcStatusText } from '../ic/provider.js';
import { decodeHeartbeatState, type HeartbeatState } from './state.js';

export interface HeartbeatOptions {
  intervalMs?: number;
  lostAfterMs?: number;
}

export class HeartbeatProvider extends IcProvider implements IcService<HeartbeatState> {
  readonly service = 'heartbeat' as const;
  readonly interfaceType = IcGuid.heartbeat;
  readonly messageType = IcMessageType.Heartbeat;
  protected readonly messageVersions: IcVersion[] = [{ major: 3, minor: 0 }, { major: 1, minor: 0 }];
  sequence = 0n;
  private stopTicks: (() => void) | null = null;
  private asked: bigint | null = null;
  /** Beats sent (a settled request frees `asked` only if no later beat was sent). */
  private beats = 0;
  private readonly intervalMs: number;
  private readonly lostAfterMs: number;

  constructor(log: IcLog, opts: HeartbeatOptions = {}) {
    super(log);
    this.intervalMs = opts.intervalMs ?? HEARTBEAT_INTERVAL_MS;
    this.lostAfterMs = opts.lostAfterMs ?? heartbeatLostAfterMs(this.intervalMs);
  }

  override status(): IcStatusText {
    if (!this.negotiated || !this.isOpen) return 'NoContact';
    this.readAnswers();
    const last = this.lastAnswerAt ?? 0;
    return Date.now() - last <= this.lostAfterMs ? 'OK' : 'LostCommunication';
  }

  protected override onNegotiated(): void {
    this.beat();
    this.stopTicks?.();
    this.stopTicks = icTicker.every(this.intervalMs, 0, () => this.beat());
  }

  /** Read at a tick (polled) or as it comes: the next beat, in the same tick, may ask at once. */
  protected override onAnswer(type: number, a: IcAnswer): void {
    if (type !== IcMessageType.Heartbeat || this.asked === null) return;
    this.answered(this.asked, a);
    this.asked = null;
    // The first answer comes as it is signalled (the status is OK at once); then they are read on ticks.
    if (!this.polled) this.pollAnswers();
  }

  protected override onClosed(): void {
    this.stopTicks?.();
    this.stopTicks = null;
    this.asked = null;
  }

  protected override statusExtra(): Record<string, unknown> {
    return { sequence: Number(this.sequence) };
  }

  private answered(asked: bigint, a: IcAnswer): void {
    if (a.header.status !== IcStatus.OK) return;
    try {
      const seq = decodeHeartbeat(a.body).sequence;
      // The guest increments what it was sent; anything else is not a heartbeat answer.
      if (seq === asked + 1n) this.sequence = seq;
    } catch (e) {
      if (!(e instanceof IcError)) throw e;
    }
  }

  private beat(): void {
    if (this.asked !== null || !this.isOpen) return;
    const asked = this.sequence;
    this.asked = asked;
    const beat = ++this.beats;
    // The answer is taken by onAnswer; a request that fails or times out frees the next beat.
    this.request(IcMessageType.Heartbeat, encodeHeartbeat(asked), this.lostAfterMs + this.pollSlackMs(this.intervalMs))
      .catch(() => undefined)
      .finally(() => {
        if (this.beats === beat) this.asked = null;
      });
  }

  protected override onRestoredAnswer(_type: number, a: IcAnswer): void {
    if (this.asked !== null) this.answered(this.asked, a);
    this.asked = null;
  }

  protected override onRestoredTimeout(): void {
    this.asked = null;
  }

  saveState(): HeartbeatState {
    return { version: 1, ic: this.saveIc(), sequence: this.sequence.toString(), asked: this.asked === null ? null : this.asked.toString() };
  }

  restoreState(s: HeartbeatState): void {
    this.restoreIc(s.ic);
    this.sequence = BigInt(s.sequence);
    // A question without its request in flight cannot be answered: ask again.
    this.asked = s.asked !== null && s.ic.pending.some((p) => p.type === IcMessageType.Heartbeat) ? BigInt(s.asked) : null;
  }
}

export function createDevice(ctx: DeviceContext): VirtualDevice<HeartbeatState> {
  return icDevice(ctx, new HeartbeatProvider(ctx.log, { intervalMs: ctx.timing.heartbeatMs }), decodeHeartbeatState);
}
