/**
 * Child process for the cross-process ring test: maps the shared-memory region named by argv[2]
 * (a ring at offset 0 covering the whole region, already initialised by the parent) and writes
 * argv[3] packets whose contents are derived from their sequence number (see `childPacket`, which
 * the test imports to check them). When the ring is full it spins briefly, then naps 50 µs.
 * Prints one JSON line of counters to stdout and exits 0; any error exits 1 with the message.
 */
import { pathToFileURL } from 'node:url';
import { openRegion } from '@hvlab/shm';
import { PacketType, RingWriter } from '../src/ring.js';

export interface ChildPacket {
  type: number;
  flags: number;
  transId: bigint;
  /** Payload before padding; the child sends bytes [0, split) and [split, length) as payload and payload2 when split >= 0. */
  payload: Uint8Array;
  split: number;
}

/** Packet number `seq`: its first 4 bytes are seq (LE), the rest a pattern; lengths 4..123 bytes. */
export function childPacket(seq: number): ChildPacket {
  const len = 4 + ((seq * 7) % 120);
  const payload = new Uint8Array(len);
  new DataView(payload.buffer).setUint32(0, seq, true);
  for (let i = 4; i < len; i++) payload[i] = (seq + i * 13) & 0xff;
  return {
    type: seq % 3 === 0 ? PacketType.Completion : PacketType.DataInband,
    flags: seq & 1,
    transId: (BigInt(seq) << 20n) | 0xabcn,
    payload,
    split: seq % 5 === 0 ? seq % len : -1,
  };
}

function main(): void {
  const [name, countArg] = process.argv.slice(2);
  if (!name || !countArg) throw new Error('usage: ring-writer-child.ts <region> <count>');
  const count = Number(countArg);
  const buffer = openRegion(name);
  const writer = new RingWriter({ buffer, byteOffset: 0, byteLength: buffer.byteLength }, `${name} out`);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let full = 0;
  let signals = 0;
  for (let seq = 0; seq < count; seq++) {
    const p = childPacket(seq);
    const a = p.split >= 0 ? p.payload.subarray(0, p.split) : p.payload;
    const b = p.split >= 0 ? p.payload.subarray(p.split) : undefined;
    let spins = 0;
    for (;;) {
      const res = writer.tryWrite(p.type, p.flags, p.transId, a, b);
      if (res === 'signal') signals++;
      if (res !== 'full') break;
      full++;
      if (++spins > 200) Atomics.wait(nap, 0, 0, 0.05);
    }
  }
  process.stdout.write(`${JSON.stringify({ written: count, full, signals })}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    main();
  } catch (e) {
    process.stderr.write(`ring-writer-child: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  }
}
