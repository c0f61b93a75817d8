/**
 * The nemesis's socket (ZeroMQ ipc in the home's 0700 `faults` directory): each frame is a
 * msgpack map `{ v, id, op, ... }` answered `{ id, ok, result | error }` (runtime's RpcServer).
 * This is an edge: `decodeNemesisRequest` is its one checking decoder; it never throws.
 *
 *   inject { req }               a FaultRequest (checked again by checkFaultRequest)
 *   list   { all, counters }     active faults (all: also ended ones; counters: each active vmbus
 *                                fault's counters so far, asked of its roots)
 *   clear  { fault, owner }      end faults now: one (fault), an owner's, or all (both null)
 *   renew  { owner, teardown, vms }  an owner's lease (vms: VMs it made, each { host, vm, id },
 *                                turned off and deleted when it lapses if still of that id; teardown: when it lapses, the home's cluster
 *                                goes down and the home is removed: a run's temporary cluster)
 *   handover { owner }           the owner is done: do now what its lease's lapse would do (its
 *                                faults end, its VMs go; with teardown, the cluster goes down and
 *                                the home is removed), so that a holder killed during its own
 *                                teardown leaves nothing half done
 *   stop   {}                    clear everything and exit
 */
import { decode, isPlainObject, VM_ID_RE, VM_NAME_RE } from '@hvlab/protocol';
import { checkFaultRequest } from './request.js';
import type { FaultRequest } from './types.js';

export const NEMESIS_WIRE_VERSION = 1;
export const NEMESIS_FRAME_MAX_BYTES = 64 * 1024;

export type NemesisRequest =
  | { v: number; id: number; op: 'inject'; req: FaultRequest }
  | { v: number; id: number; op: 'list'; all: boolean; counters: boolean }
  | { v: number; id: number; op: 'clear'; fault: string | null; owner: string | null }
  /** `vms`: every VM the owner made so far (null: not said, the last list stands). */
  | { v: number; id: number; op: 'renew'; owner: string; teardown: boolean; vms: OwnedVm[] | null }
  | { v: number; id: number; op: 'handover'; owner: string }
  | { v: number; id: number; op: 'stop' };

const OPS = ['inject', 'list', 'clear', 'renew', 'handover', 'stop'] as const;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$/;

/** A VM an owner made (a chaos run on an existing cluster): turned off and deleted when its lease lapses. */
export interface OwnedVm {
  host: string;
  vm: string;
  /** The VM's id, chosen by the owner before it made the VM (vmNew `id`): only that VM goes, never a later one of its name. */
  id: string;
}
/** The most VMs one renew names. */
export const MAX_OWNED_VMS = 64;

export function decodeNemesisRequest(bytes: Uint8Array): { ok: true; value: NemesisRequest } | { ok: false; id: number; message: string } {
  if (bytes.length > NEMESIS_FRAME_MAX_BYTES) return { ok: false, id: 0, message: `a frame of ${bytes.length} bytes is over ${NEMESIS_FRAME_MAX_BYTES}` };
  let v: unknown;
  try {
    v = decode(bytes);
  } catch {
    return { ok: false, id: 0, message: 'not msgpack' };
  }
  if (!isPlainObject(v)) return { ok: false, id: 0, message: 'a request must be a map' };
  const id = typeof v.id === 'number' && Number.isSafeInteger(v.id) && v.id > 0 ? v.id : 0;
  if (id === 0) return { ok: false, id: 0, message: 'a request needs a positive whole "id"' };
  const fail = (message: string): { ok: false; id: number; message: string } => ({ ok: false, id, message });
  if (v.v !== NEMESIS_WIRE_VERSION) return fail(`nemesis wire version ${typeof v.v === 'number' ? v.v : '?'} is not ${NEMESIS_WIRE_VERSION}`);
  const op = v.op;
  if (typeof op !== 'string' || !(OPS as readonly string[]).includes(op)) return fail(`unknown operation${typeof op === 'string' ? ` "${op.slice(0, 32)}"` : ''} (known: ${OPS.join(', ')})`);
  const allowed: Record<string, string[]> = { inject: ['req'], list: ['all', 'counters'], clear: ['fault', 'owner'], renew: ['owner', 'teardown', 'vms'], handover: ['owner'], stop: [] };
  for (const k of Object.keys(v)) if (!['v', 'id', 'op', ...allowed[op]!].includes(k)) return fail(`${op}: unknown field "${k.slice(0, 32)}"`);
  const name = (k: string, nullable: boolean): string | null | Error => {
    const x = v[k];
    if ((x === undefined || x === null) && nullable) return null;
    if (typeof x !== 'string' || !NAME_RE.test(x)) return new Error(`${op}: "${k}" must be a name`);
    return x;
  };
  switch (op as (typeof OPS)[number]) {
    case 'inject': {
      const r = checkFaultRequest(v.req);
      return r.ok ? { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'inject', req: r.value } } : fail(r.message);
    }
    case 'list':
      if (v.all !== undefined && typeof v.all !== 'boolean') return fail('list: "all" must be true or false');
      if (v.counters !== undefined && typeof v.counters !== 'boolean') return fail('list: "counters" must be true or false');
      return { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'list', all: v.all === true, counters: v.counters === true } };
    case 'clear': {
      const fault = name('fault', true);
      const owner = name('owner', true);
      if (fault instanceof Error) return fail(fault.message);
      if (owner instanceof Error) return fail(owner.message);
      return { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'clear', fault, owner } };
    }
    case 'renew': {
      const owner = name('owner', false);
      if (owner instanceof Error || owner === null) return fail(owner instanceof Error ? owner.message : 'renew needs an owner');
      if (v.teardown !== undefined && v.teardown !== null && typeof v.teardown !== 'boolean') return fail('renew: "teardown" must be true or false');
      let vms: OwnedVm[] | null = null;
      if (v.vms !== undefined && v.vms !== null) {
        vms = [];
        if (!Array.isArray(v.vms) || v.vms.length > MAX_OWNED_VMS) return fail(`renew: "vms" must be a list of at most ${MAX_OWNED_VMS} { host, vm, id }`);
        for (const x of v.vms as unknown[]) {
          if (!isPlainObject(x) || typeof x.host !== 'string' || !NAME_RE.test(x.host) || typeof x.vm !== 'string' || !VM_NAME_RE.test(x.vm)
            || typeof x.id !== 'string' || !VM_ID_RE.test(x.id) || Object.keys(x).some((k) => k !== 'host' && k !== 'vm' && k !== 'id')) {
            return fail('renew: each of "vms" must be { host, vm, id } with a host name, a VM name and the VM\'s id (a UUID)');
          }
          vms.push({ host: x.host, vm: x.vm, id: x.id.toLowerCase() });
        }
      }
      return { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'renew', owner, teardown: v.teardown === true, vms } };
    }
    case 'handover': {
      const owner = name('owner', false);
      if (owner instanceof Error || owner === null) return fail(owner instanceof Error ? owner.message : 'handover needs an owner');
      return { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'handover', owner } };
    }
    case 'stop':
      return { ok: true, value: { v: NEMESIS_WIRE_VERSION, id, op: 'stop' } };
  }
}
