/**
 * Time sync provider: right after negotiation it sends a Sync (the guest steps its clock to host
 * time), then a Sample every `intervalMs`. Host time is sent as 100 ns units since 1601 together
 * with the reference time at which it was read, as in Hyper-V, so a guest that takes the sample
 * late (a frozen VM) still computes host time correctly.
 *
 * Deviations: the reference time is the host's CLOCK_MONOTONIC in 100 ns units (one counter for
 * every partition of the host, not one per partition). The guest answers with its own clock
 * reading (taken before it applied the sample) in `parentTime` and the reference time of that
 * reading, so the host can report the guest's offset — an hvlab extension.
 */
import { IcGuid, IcMessageType, IcStatus, IcError, type IcVersion } from '@hvlab/protocol';
import { decodeTimeSync, encodeTimeSync, filetimeToMs, msToFiletime, TimeSyncFlags } from '@hvlab/protocol/timesync';
import type { DeviceContext, VirtualDevice } from '../device.js';
import { icDevice, type IcService } from '../ic/device.js';
import { icTicker } from '../ic/ticker.js';
import { IcProvider, type IcLog } from '../ic/provider.js';
import { decodeTimeSyncState, type TimeSyncState } from './state.js';

/** The reference counter: CLOCK_MONOTONIC in 100 ns units. */
export function referenceTime(): bigint {
  return process.hrtime.bigint() / 100n;
}

export class TimeSyncProvider extends IcProvider implements IcService<TimeSyncState> {
  readonly service = 'timesync' as const;
  readonly interfaceType = IcGuid.timesync;
  readonly messageType = IcMessageType.TimeSync;
  protected readonly messageVersions: IcVersion[] = [{ major: 4, minor: 0 }, { major: 3, minor: 0 }];
  /**
   * The guest's clock minus host time at the latest sample (ms), as the guest read it before it
   * applied the sample; and at the first answer (a Sync's: the clock the guest came with). A
   * Sync's answer is never the latest offset: the guest stepped its clock to host time right after
   * the reading it answers with, so that reading says where the clock was, not where it is (after
   * a move it said the guest was the blackout behind, though it was on time).
   */
  offsetMs: number | null = null;
  initialOffsetMs: number | null = null;
  samples = 0;
  private stopTicks: (() => void) | null = null;

  constructor(log: IcLog, private readonly intervalMs = 5000) {
    super(log);
  }

  protected override onNegotiated(): void {
    // At negotiation and when the channel comes back from a saved state (a restore, a move's
    // arrival: the guest's clock stood still meanwhile), a Sync steps the guest's clock to host
    // time; the Sample right after it says where the clock is then (a Sync's own answer is the
    // reading from before its step).
    void this.send(TimeSyncFlags.Sync).then(() => this.send(TimeSyncFlags.Sample));
    this.stopTicks?.();
    // A sample carries the time it was taken at, so one sent up to a quarter period early (with
    // the heartbeat's wake-up) is as exact as one sent on time.
    this.stopTicks = icTicker.every(this.intervalMs, this.intervalMs / 4, () => void this.send(TimeSyncFlags.Sample));
  }

  protected override onClosed(): void {
    this.stopTicks?.();
    this.stopTicks = null;
  }

  /**
   * Steps the guest's clock to host time now (a Sync), then takes a Sample, so that `offsetMs`
   * says where the clock is after the step. For the end of a clock fault: while it lasted, samples
   * brought the guest's clock back to host time against a reference time that was off, so when
   * the reference time steps back the guest's clock is off the other way until a sample notices
   * (a period). Resolves when both are answered or after `waitMs` (a paused VM answers later),
   * never rejects.
   */
  async resync(waitMs: number): Promise<void> {
    if (!this.isOpen || !this.negotiated) return;
    // Answers are read on the worker's ticks (polled): read them as they come meanwhile.
    const read = setInterval(() => this.readAnswers(), 2);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.send(TimeSyncFlags.Sync).then(() => this.send(TimeSyncFlags.Sample)),
        new Promise<void>((r) => (timer = setTimeout(r, waitMs))),
      ]);
    } finally {
      clearInterval(read);
      clearTimeout(timer);
    }
  }

  /** Sends a time sample with `flags`; resolves when it is answered or has failed (never rejects). */
  private send(flags: number): Promise<void> {
    if (!this.isOpen) return Promise.resolve();
    const hostMs = Date.now();
    const ref = referenceTime();
    const body = encodeTimeSync({ parentTime: msToFiletime(hostMs), referenceTime: ref, flags, leapFlags: 0, stratum: 2 });
    // Polled, the answer is read at a later tick, up to a period later (when no other service
    // ticks more often).
    return this.request(IcMessageType.TimeSync, body, Math.max(2000, this.intervalMs) + this.pollSlackMs(this.intervalMs))
      .then((a) => {
        // The first answer comes as it is signalled (the offset is known at once); then they are
        // read on ticks, which with a long period and no heartbeat may be a period later.
        if (!this.polled) this.pollAnswers();
        if (a.header.status !== IcStatus.OK) return;
        try {
          const t = decodeTimeSync(a.body);
          const guestMs = filetimeToMs(t.parentTime);
          // Host time at the moment the guest read its clock.
          const hostThenMs = hostMs + Number(t.referenceTime - ref) / 1e4;
          const offsetMs = Math.round(guestMs - hostThenMs);
          if (this.initialOffsetMs === null) this.initialOffsetMs = offsetMs;
          if (flags !== TimeSyncFlags.Sync) this.offsetMs = offsetMs;
          this.samples++;
        } catch (e) {
          if (!(e instanceof IcError)) throw e;
        }
      })
      .catch(() => undefined);
  }

  protected override statusExtra(): Record<string, unknown> {
    return { offsetMs: this.offsetMs, initialOffsetMs: this.initialOffsetMs, samples: this.samples };
  }

  saveState(): TimeSyncState {
    return { version: 1, ic: this.saveIc(), offsetMs: this.offsetMs, initialOffsetMs: this.initialOffsetMs, samples: this.samples };
  }

  restoreState(s: TimeSyncState): void {
    this.restoreIc(s.ic);
    this.offsetMs = s.offsetMs;
    this.initialOffsetMs = s.initialOffsetMs;
    this.samples = s.samples;
  }
}

export function createDevice(ctx: DeviceContext): VirtualDevice<TimeSyncState> {
  return icDevice(ctx, new TimeSyncProvider(ctx.log, ctx.timing.timesyncMs), decodeTimeSyncState);
}
