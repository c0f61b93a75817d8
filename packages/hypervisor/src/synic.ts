/**
 * The SynIC of one virtual processor: SINT registers, the message page and the event-flag page,
 * with the TLFS delivery rules.
 *
 * Messages: a slot is free when its type is 0. When it is busy the hypervisor sets MessagePending
 * in the slot and queues the message; the guest, after copying and clearing the type, writes EOM
 * (only if MessagePending was set) and the hypervisor retries. Masked SINTs or a disabled message
 * page also queue. Events: SignalEvent sets a flag atomically and raises the SINT only when the
 * flag was clear.
 *
 * Queues are capped: 64 messages per SINT, and all SynICs of a partition share one budget
 * (`MessageBudget`, 1024 by default); past either cap a post gets INSUFFICIENT_BUFFERS, so a guest
 * that never writes EOM cannot make the hypervisor hold more.
 *
 * The queues are part of a VP's saved state (`savedQueue` / `restoreQueue`): a message the
 * hypervisor accepted is delivered after a restore as it would have been without one.
 *
 * Private-memory mode (no shared memory): the hypervisor cannot see the guest's pages, so it keeps
 * the slot's busy bit itself, ships the slot bytes with the interrupt, and the guest always writes
 * EOM after consuming a message (a documented deviation of the fallback only).
 */
import {
  MESSAGE_HEADER_SIZE, MESSAGE_SLOT_SIZE, MSG_FLAG_PENDING, MsgHeader, SINT_COUNT, EVENT_FLAG_BYTES_PER_SINT,
  sintMasked, synicPageGpa, HvStatus, MAX_QUEUED_MESSAGES_PER_SINT, type SavedSynicMessage,
} from '@hvlab/protocol';

export const MAX_QUEUED_PER_SINT = MAX_QUEUED_MESSAGES_PER_SINT;

/** A cap on queued messages shared by the SynICs of one partition's VPs. */
export interface MessageBudget {
  queued: number;
  readonly max: number;
}

export interface QueuedMessage {
  type: number;
  payload: Uint8Array;
  sender: number;
}

export interface SynicDelivery {
  /** Raise SINT `sint` on this VP (notify the partition). In private mode, with the slot bytes or flag. */
  raise(sint: number, extra: { slot?: Uint8Array; flag?: number }): void;
}

export class SynIc {
  readonly sint = new Array<number>(SINT_COUNT).fill(1 << 16); // all start masked
  scontrol = 0;
  simp = 0;
  siefp = 0;
  private readonly queues: QueuedMessage[][] = Array.from({ length: SINT_COUNT }, () => []);
  private readonly privateBusy = new Array<boolean>(SINT_COUNT).fill(false);
  messagesDelivered = 0;
  eventsRaised = 0;

  constructor(
    private readonly memory: DataView | null,
    private readonly memoryBytes: number,
    private readonly out: SynicDelivery,
    private readonly budget: MessageBudget = { queued: 0, max: Infinity },
  ) {}

  get enabled(): boolean {
    return (this.scontrol & 1) === 1;
  }

  private pageGpa(reg: number): number | null {
    const g = synicPageGpa(reg);
    return g !== null && g + 4096 <= this.memoryBytes ? g : null;
  }

  /** Queues or delivers a message. Returns an HV_STATUS. */
  post(sint: number, msg: QueuedMessage): number {
    const q = this.queues[sint];
    if (q.length >= MAX_QUEUED_PER_SINT || this.budget.queued >= this.budget.max) return HvStatus.INSUFFICIENT_BUFFERS;
    q.push(msg);
    this.budget.queued++;
    this.pump(sint);
    return HvStatus.SUCCESS;
  }

  /** Tries to move queued messages of a SINT into its slot. */
  pump(sint: number): void {
    const q = this.queues[sint];
    if (q.length === 0 || !this.enabled || sintMasked(this.sint[sint])) return;
    const page = this.pageGpa(this.simp);
    if (page === null) return;
    const slotOff = page + sint * MESSAGE_SLOT_SIZE;
    if (this.memory) {
      const mem = this.memory;
      if (mem.getUint32(slotOff + MsgHeader.type, true) !== 0) {
        // The slot is taken: say a message is pending (an atomic OR into the header word that holds
        // the flags byte), then look at the slot again. A guest frees the slot and then reads the
        // flag (Linux's vmbus_signal_eom): had it freed the slot after our first look and read the
        // flag before we set it, it would not EOM and the message would wait for good. Either it
        // sees the flag and EOMs, or we see the free slot here and deliver.
        const head = new Int32Array(mem.buffer, mem.byteOffset + slotOff, 2);
        Atomics.or(head, 1, MSG_FLAG_PENDING << ((MsgHeader.flags - 4) * 8));
        if (Atomics.load(head, 0) !== 0) return;
      }
      const m = q.shift()!;
      this.budget.queued--;
      const bytes = new Uint8Array(mem.buffer, mem.byteOffset + slotOff, MESSAGE_SLOT_SIZE);
      bytes.set(m.payload, MESSAGE_HEADER_SIZE);
      mem.setUint8(slotOff + MsgHeader.payloadSize, m.payload.length);
      mem.setUint8(slotOff + MsgHeader.flags, q.length > 0 ? MSG_FLAG_PENDING : 0);
      mem.setUint16(slotOff + 6, 0, true);
      mem.setBigUint64(slotOff + MsgHeader.sender, BigInt(m.sender), true);
      // The type is written last, with a full barrier: a non-zero type publishes the slot.
      Atomics.store(new Int32Array(mem.buffer, mem.byteOffset + slotOff, 1), 0, m.type | 0);
      this.messagesDelivered++;
      this.out.raise(sint, {});
    } else {
      if (this.privateBusy[sint]) return;
      const m = q.shift()!;
      this.budget.queued--;
      const slot = new Uint8Array(MESSAGE_SLOT_SIZE);
      const dv = new DataView(slot.buffer);
      dv.setUint32(MsgHeader.type, m.type >>> 0, true);
      dv.setUint8(MsgHeader.payloadSize, m.payload.length);
      dv.setUint8(MsgHeader.flags, MSG_FLAG_PENDING); // the guest always answers with EOM here
      dv.setBigUint64(MsgHeader.sender, BigInt(m.sender), true);
      slot.set(m.payload, MESSAGE_HEADER_SIZE);
      this.privateBusy[sint] = true;
      this.messagesDelivered++;
      this.out.raise(sint, { slot });
    }
  }

  /** EOM: the guest has freed a slot; retry every queue. */
  endOfMessage(): void {
    this.privateBusy.fill(false);
    for (let s = 0; s < SINT_COUNT; s++) this.pump(s);
  }

  pumpAll(): void {
    for (let s = 0; s < SINT_COUNT; s++) this.pump(s);
  }

  /** Sets event flag `flag` of SINT `sint`; raises the SINT only if the flag was clear. */
  signal(sint: number, flag: number): number {
    if (!this.enabled) return HvStatus.INVALID_SYNIC_STATE;
    const page = this.pageGpa(this.siefp);
    if (page === null) return HvStatus.INVALID_SYNIC_STATE;
    if (this.memory) {
      const mem = this.memory;
      const wordOff = page + sint * EVENT_FLAG_BYTES_PER_SINT + (flag >>> 5) * 4;
      const bit = 1 << (flag & 31);
      const old = Atomics.or(new Int32Array(mem.buffer, mem.byteOffset + wordOff, 1), 0, bit);
      if ((old & bit) !== 0) return HvStatus.SUCCESS;
      if (sintMasked(this.sint[sint])) return HvStatus.SUCCESS; // flag stays set; no interrupt
      this.eventsRaised++;
      this.out.raise(sint, {});
    } else {
      if (sintMasked(this.sint[sint])) return HvStatus.SUCCESS;
      this.eventsRaised++;
      this.out.raise(sint, { flag });
    }
    return HvStatus.SUCCESS;
  }

  queued(sint: number): number {
    return this.queues[sint].length;
  }

  /** Every queued message, SINT by SINT in delivery order, as saved-state data. */
  savedQueue(): SavedSynicMessage[] {
    const out: SavedSynicMessage[] = [];
    this.queues.forEach((q, sint) => {
      for (const m of q) out.push({ sint, type: m.type >>> 0, payload: [...m.payload], sender: m.sender });
    });
    return out;
  }

  /**
   * Why `saved` (checked by decodeSavedVpState) cannot replace the queues, or null: a SINT past its
   * cap, or the partition's budget past its cap once this VP's current queue is given back.
   */
  restoreProblem(saved: readonly SavedSynicMessage[]): string | null {
    const perSint = new Array<number>(SINT_COUNT).fill(0);
    for (const m of saved) {
      if (!Number.isInteger(m.sint) || m.sint < 0 || m.sint >= SINT_COUNT) return `a queued message names SINT ${m.sint}`;
      if (++perSint[m.sint] > MAX_QUEUED_PER_SINT) return `SINT ${m.sint} would hold more than ${MAX_QUEUED_PER_SINT} queued messages`;
    }
    const mine = this.queues.reduce((n, q) => n + q.length, 0);
    const after = this.budget.queued - mine + saved.length;
    if (after > this.budget.max) return `the partition would hold ${after} queued messages, more than its ${this.budget.max}`;
    return null;
  }

  /**
   * Replaces the queues with `saved` (for which `restoreProblem` found nothing), then delivers
   * what free slots take; a busy slot gets MessagePending, so the guest's EOM brings the rest.
   */
  restoreQueue(saved: readonly SavedSynicMessage[]): void {
    this.discard();
    for (const m of saved) this.queues[m.sint].push({ type: m.type, payload: Uint8Array.from(m.payload), sender: m.sender });
    this.budget.queued += saved.length;
    this.pumpAll();
  }

  /** Drops every queued message (the VP is deleted), returning their share of the budget. */
  discard(): void {
    for (const q of this.queues) {
      this.budget.queued -= q.length;
      q.length = 0;
    }
  }
}
