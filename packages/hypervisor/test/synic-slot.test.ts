/**
 * The hypervisor's half of the SynIC message-slot protocol: a message that finds its slot taken
 * is queued and MessagePending set, and the slot is looked at again after the flag is set. A guest
 * that freed the slot between the hypervisor's first look and its flag (and read the flag before
 * it was set, so it sends no EOM) gets the message delivered at once instead of never. Single
 * threaded here: the memory's first read of the slot's type is where the guest frees it.
 */
import { expect } from 'chai';
import { MSG_FLAG_PENDING, MsgHeader, MESSAGE_SLOT_SIZE, synicPageRegister } from '@hvlab/protocol';
import { SynIc } from '../src/synic.js';

const SIMP = 0x10000;
const SINT = 2;
const slot = SIMP + SINT * MESSAGE_SLOT_SIZE;

/** A DataView whose reads of the slot's type can run `onTypeRead` after reading (the guest, racing). */
class RacingView extends DataView<ArrayBufferLike> {
  onTypeRead: (() => void) | null = null;
  override getUint32(offset: number, little?: boolean): number {
    const v = super.getUint32(offset, little);
    if (offset === slot + MsgHeader.type && this.onTypeRead) {
      const f = this.onTypeRead;
      this.onTypeRead = null;
      f();
    }
    return v;
  }
}

function synic(): { view: RacingView; sy: SynIc; raised: number[] } {
  const buf = new SharedArrayBuffer(0x20000);
  const view = new RacingView(buf);
  const raised: number[] = [];
  const sy = new SynIc(view, buf.byteLength, { raise: (s) => void raised.push(s) });
  sy.scontrol = 1;
  sy.simp = synicPageRegister(SIMP);
  sy.sint[SINT] = 0x31;
  return { view, sy, raised };
}

const msg = (type: number) => ({ type, payload: new Uint8Array([type & 0xff]), sender: 3 });
const typeOf = (v: DataView): number => v.getUint32(slot + MsgHeader.type, true);

describe('SynIC message slot, hypervisor side', () => {
  it('a slot freed between the hypervisor\'s look and its MessagePending gets the queued message at once', () => {
    const { view, sy, raised } = synic();
    sy.post(SINT, msg(0x101));
    expect(typeOf(view)).to.equal(0x101);
    // The guest frees the slot right after the hypervisor saw it taken (it read the flag as clear before).
    view.onTypeRead = () => new Int32Array(view.buffer, slot, 1)[0] = 0;
    sy.post(SINT, msg(0x102));
    expect(typeOf(view), 'delivered without an EOM').to.equal(0x102);
    expect(raised).to.deep.equal([SINT, SINT]);
  });

  it('a slot still taken keeps the message queued with MessagePending set, and EOM delivers it', () => {
    const { view, sy } = synic();
    sy.post(SINT, msg(0x101));
    sy.post(SINT, msg(0x102));
    expect(typeOf(view)).to.equal(0x101);
    expect(view.getUint8(slot + MsgHeader.flags) & MSG_FLAG_PENDING).to.equal(MSG_FLAG_PENDING);
    new Int32Array(view.buffer, slot, 1)[0] = 0;
    sy.endOfMessage();
    expect(typeOf(view)).to.equal(0x102);
    expect(view.getUint8(slot + MsgHeader.flags) & MSG_FLAG_PENDING, 'nothing behind it').to.equal(0);
  });
});
