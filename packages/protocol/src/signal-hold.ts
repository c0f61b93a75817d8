/**
 * Holding signals back for the length of a synchronous step, so that a process that writes to
 * several VMBus channels in one go signals their peer once, with every flag (a SignalEvent with
 * more flags on the hypercall page, hcpage.ts), instead of once per channel: the integration
 * services' tick (vsp's IcTicker) writes a heartbeat request and a time sample together. Whoever
 * holds signals (the hypercall client, runtime's HvClient) asks `whenReleased` for the end of the
 * outermost `holdSignals`; nothing is held outside one, and the hold never outlives the step
 * (no timer: the release runs in the `finally` of the step itself).
 */

let depth = 0;
const waiting: Array<() => void> = [];

/** Runs `fn` with signals held; when the outermost hold ends, whoever held one sends it. */
export function holdSignals<T>(fn: () => T): T {
  depth++;
  try {
    return fn();
  } finally {
    depth--;
    if (depth === 0) releaseSignals();
  }
}

/** Whether a `holdSignals` step is running. */
export function signalsHeld(): boolean {
  return depth > 0;
}

/** Calls `send` when the outermost hold ends (at once when none is running). */
export function whenReleased(send: () => void): void {
  if (depth === 0) send();
  else waiting.push(send);
}

function releaseSignals(): void {
  // A sender that holds again (a nested step of its own) is served by that step's end.
  while (waiting.length > 0 && depth === 0) {
    const send = waiting.shift()!;
    try {
      send();
    } catch {
      // One sender's failure is its own (it reports it); the others still send.
    }
  }
}
