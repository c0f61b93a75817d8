/**
 * The start-up line a partition process reads on stdin. A partition process is started ahead of
 * need — by its VMWP the moment that starts, so both load their code at once — and sits with its
 * code loaded and a VP thread ready until this one JSON line assigns it a partition. The token
 * travels here, never in the environment (which /proc/PID/environ shows). Bytes entering a
 * process: checked field by field, and an Error names the first bad one.
 */
export interface PartitionStartInput {
  home: string;
  hostId: string;
  hvPid: number;
  partitionId: number;
  vm: string;
  token: string;
  /** Post-copy: the control region (shared with the VMWP) through which missing pages are asked for. */
  postcopyControl?: string;
  /**
   * A live migration's destination: get ready (hypervisor session, memory mapped, `vps` VP threads
   * loaded) and wait for the VMWP's `go` (which may name a post-copy control region) before the
   * guest kernel reads anything: the blackout then pays none of the start-up.
   */
  hold?: boolean;
  vps?: number;
  /**
   * With `hold`: a one-page region of the VMWP's whose word 0 it sets (and wakes) for a `go`
   * without a post-copy control region, in two steps (protocol's GoWord: Start, then Run). A store
   * and a futex wake, which this process's word
   * watch brings to its event loop: 0.48 ms p50 from the VMWP's go to the guest's start, against
   * 1.12 ms for the IPC message (8 moves each way, alternated; downtime p50 15.5 ms against 19).
   */
  goRegion?: string;
}

export function decodePartitionStartInput(text: string): PartitionStartInput {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error('the start-up input is not JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('the start-up input is not a map');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['home', 'hostId', 'hvPid', 'partitionId', 'vm', 'token', 'postcopyControl', 'hold', 'vps', 'goRegion'].includes(k)) throw new Error(`the start-up input has an unknown field ${JSON.stringify(k.slice(0, 32))}`);
  const str = (k: string, max: number): string => {
    const x = o[k];
    if (typeof x !== 'string' || x.length === 0 || x.length > max) throw new Error(`field ${k} is not a string of 1 to ${max} characters`);
    return x;
  };
  const int = (k: string, min: number, max: number): number => {
    const x = o[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) throw new Error(`field ${k} is not an integer from ${min} to ${max}`);
    return x;
  };
  const out: PartitionStartInput = { home: str('home', 4096), hostId: str('hostId', 64), hvPid: int('hvPid', 1, 0x7fffffff), partitionId: int('partitionId', 1, 0xffffffff), vm: str('vm', 64), token: str('token', 256) };
  if (o.postcopyControl !== undefined) out.postcopyControl = str('postcopyControl', 200);
  if (o.hold !== undefined) {
    if (o.hold !== true) throw new Error('field hold is not true');
    out.hold = true;
    out.vps = int('vps', 1, 64);
    if (o.goRegion !== undefined) out.goRegion = str('goRegion', 200);
  } else if (o.goRegion !== undefined) throw new Error('field goRegion needs hold');
  return out;
}
