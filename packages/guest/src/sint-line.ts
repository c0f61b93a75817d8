/**
 * The line a VP thread raises a SINT on for the kernel's main thread, which services SINTs (the
 * VMBus driver and the integration services live on its event loop, as a Linux guest's run in its
 * interrupt handler and the tasklets it schedules).
 *
 * A VP thread used to post each SINT as a worker message. A message costs the receiving loop more
 * than the wake-up itself: the port's queue, the structured clone, the 'message' event. The line
 * is one Int32 word per VP, a bit per SINT, in a SharedArrayBuffer, and a wake descriptor of this
 * process that the main thread's loop polls (the same eventfd the hypervisor wakes a session's
 * loop with). A VP sets its SINT's bit and signals the descriptor only when its word was 0: a
 * non-zero word means a signal is out that the loop has not served yet, and the loop takes the
 * whole word when it serves it, so a bit set before that is seen, and one set after it finds the
 * word 0 and signals again. Two raises of one SINT before the loop looks make one call, as two
 * edges of one interrupt line before the CPU takes it make one interrupt: the handler drains every
 * event flag and the message slot of its SINT, whatever raised it.
 *
 * Measured on this 2-core machine: a worker waking its process's loop, which answers through a
 * futex (18000 round trips after warm-up per run, runs alternated): on one CPU (taskset, four runs
 * each way) p50 13.8-14.1 µs with a message, 10.9-11.5 with the wake descriptor; on two (three
 * runs each) 49.6-50.1 against 45.4-47.4. `bench vmbus`'s signalled ring round trip, seven full
 * runs each way alternated: p50 median 45.7 µs against 50.3 with messages.
 *
 * The hypervisor raises SINTs on the line too (`attachHypervisor`): a SINT for a halted VP of
 * this partition would wake that VP only for it to raise the SINT here and halt again, so the
 * hypervisor sets the SINT's bit in the VP page's sintLineRaised word itself (the VP region is
 * shared with it) and rings this process's hypercall page, whose `attention` the loop serves. The
 * kernel says which SINTs it services here with a bit each in the VP page's sintLineOn word
 * (hvlab's own register, 0 by default: the hypervisor then pends the vector as the TLFS says);
 * the hypervisor raises one here only while the VP is halted, the partition and the VP are not
 * suspended, and the APIC would take the vector now (vpage.ts sintLineAccepts; hcloop.ts
 * raiseOnLine). Those words are not saved state: a SINT raised on the line just before a save or a
 * move that the loop had not served is still in the SynIC's event flags or message slot, in guest
 * memory, and a resumed kernel scans every such SINT on every VP once (GuestKernel.resumeVmbus).
 *
 * Without the addon's wake descriptors (`openWakeFd` gives null, or this process may not take its
 * own descriptor), `SintLine.open` gives null and the VP threads post messages as before.
 */
import { closeWakeFd, openWakeFd, signalWakeFd, watchWakeFd, type WakeFd } from '@hvlab/shm';
import { VpPage, vpPageOffset } from '@hvlab/protocol';

/** What rings when the hypervisor raised a SINT on the line: the session's page (HvClient.onPageAttention). */
export interface LineRinger {
  onPageAttention(fn: () => void): (() => void) | null;
}

/** What a VP thread needs to raise SINTs on the line (it travels in VpStart: plain data). */
export interface SintLineHandle {
  /** The wake descriptor's id in this process (`signalWakeFd`). */
  id: number;
  /** One Int32 word per VP: bit s = SINT s raised and not yet served. */
  pending: SharedArrayBuffer;
}

/** The number of SINTs of a SynIC (bits 0-15 of a VP's word). */
const SINTS = 16;

/**
 * A VP thread's side: the function that raises SINT `sint` of VP `vp` on `line` (its view of the
 * words is made once, here, not on each interrupt). A VP or SINT out of range is ignored.
 */
export function sintRaiser(line: SintLineHandle): (vp: number, sint: number) => void {
  const words = new Int32Array(line.pending);
  const id = line.id;
  return (vp, sint) => {
    if (vp < 0 || vp >= words.length || sint < 0 || sint >= SINTS) return;
    if (Atomics.or(words, vp, 1 << sint) === 0) signalWakeFd(id);
  };
}

/** The kernel's side: the line, watched on this thread's event loop. */
export class SintLine {
  readonly handle: SintLineHandle;
  private readonly words: Int32Array;
  private unwatch: (() => void) | null = null;
  /** The hypervisor's side (attachHypervisor): the VP region as words, the registered SINT bits, and what stops the ring's hook. */
  private hv: { words: Int32Array; bits: number; unhook: () => void } | null = null;

  private constructor(fd: WakeFd, vpCount: number, private readonly onSint: (vp: number, sint: number) => void) {
    this.handle = { id: fd.id, pending: new SharedArrayBuffer(4 * vpCount) };
    this.words = new Int32Array(this.handle.pending);
  }

  /**
   * A line for `vpCount` VPs whose raised SINTs `onSint` gets on this thread's loop, in VP order
   * and SINT order within a VP; null when this process cannot have one (see the module comment).
   */
  static open(vpCount: number, onSint: (vp: number, sint: number) => void): SintLine | null {
    if (!Number.isInteger(vpCount) || vpCount < 1) return null;
    const fd = openWakeFd();
    if (!fd) return null;
    const line = new SintLine(fd, vpCount, onSint);
    try {
      line.unwatch = watchWakeFd(process.pid, fd.fd, () => line.serve());
    } catch {
      closeWakeFd(fd.id);
      return null;
    }
    return line;
  }

  /**
   * Lets the hypervisor raise SINTs `sints` on this line for every VP (see the module comment):
   * `ringer` is this process's hypervisor session, whose page rings when it did; `vpRegion` the
   * partition's VP region. Registers the SINTs in each VP page (VpPage.sintLineOn) once the ring is
   * served. False when the session has no page (nothing would ring): the hypervisor then goes on
   * through the VPs.
   */
  attachHypervisor(vpRegion: SharedArrayBuffer, sints: readonly number[], ringer: LineRinger): boolean {
    if (this.hv || !this.unwatch) return this.hv !== null;
    const vpCount = this.words.length;
    if (vpRegion.byteLength < vpPageOffset(vpCount)) return false;
    let bits = 0;
    for (const s of sints) if (Number.isInteger(s) && s >= 0 && s < SINTS) bits |= 1 << s;
    const words = new Int32Array(vpRegion);
    const unhook = ringer.onPageAttention(() => this.serveHypervisor());
    if (!unhook) return false;
    this.hv = { words, bits, unhook };
    for (let vp = 0; vp < vpCount; vp++) Atomics.or(words, (vpPageOffset(vp) + VpPage.sintLineOn) >> 2, bits);
    return true;
  }

  /** Takes every SINT the hypervisor raised (VpPage.sintLineRaised), a VP's word at a time. */
  private serveHypervisor(): void {
    const hv = this.hv;
    if (!hv) return;
    for (let vp = 0; vp < this.words.length && this.hv; vp++) {
      const at = (vpPageOffset(vp) + VpPage.sintLineRaised) >> 2;
      if (Atomics.load(hv.words, at) === 0) continue;
      const bits = Atomics.exchange(hv.words, at, 0);
      for (let s = 0; s < SINTS; s++) if ((bits & (1 << s)) !== 0) this.onSint(vp, s);
    }
  }

  /** Takes every raised SINT, a VP's word at a time, and hands each to `onSint`. */
  private serve(): void {
    const words = this.words;
    for (let vp = 0; vp < words.length && this.unwatch; vp++) {
      // Load first: most wake-ups concern one VP, and an exchange of a 0 word is a write for nothing.
      if (Atomics.load(words, vp) === 0) continue;
      const bits = Atomics.exchange(words, vp, 0);
      for (let s = 0; s < SINTS; s++) if ((bits & (1 << s)) !== 0) this.onSint(vp, s);
    }
  }

  /** Stops watching and closes the descriptor; a VP's raise after this is lost (its signal is ignored). */
  close(): void {
    if (!this.unwatch) return;
    const hv = this.hv;
    if (hv) {
      // The hypervisor goes through the VPs again (a raise it made here meanwhile is left unserved, as a VP's after close).
      for (let vp = 0; vp < this.words.length; vp++) Atomics.and(hv.words, (vpPageOffset(vp) + VpPage.sintLineOn) >> 2, ~hv.bits);
      hv.unhook();
      this.hv = null;
    }
    this.unwatch();
    this.unwatch = null;
    closeWakeFd(this.handle.id);
  }

  /** The SINT bits raised on VP `vp` that the loop has not taken yet (tests). */
  pendingFor(vp: number): number {
    return Atomics.load(this.words, vp);
  }
}
