/**
 * The guest's wall clock. It starts from the firmware's real-time clock (which a VM can be
 * configured to have wrong, `--rtc-offset`) and then runs on its own; only the time-sync
 * integration service brings it to host time.
 */
export class GuestWallClock {
  private readonly t0 = performance.now();
  private adjustMs = 0;

  constructor(private readonly rtcMs: number) {}

  now(): number {
    return this.rtcMs + (performance.now() - this.t0) + this.adjustMs;
  }

  adjust(deltaMs: number): void {
    if (Number.isFinite(deltaMs)) this.adjustMs += deltaMs;
  }
}
