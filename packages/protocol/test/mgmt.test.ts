/**
 * Unit tests of the management API's checking decoder (packages/protocol/src/mgmt.ts): a frame
 * becomes a typed request or a typed refusal (BadRequest, VersionMismatch, InvalidArgument) with
 * the request's id when one could be read; each operation's arguments have one exact shape; and,
 * as properties, no bytes and no value make a decoder throw, and what a decoder accepts it accepts
 * again unchanged.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  decodeMgmtRequest, decodeMgmtArgs, decodeMgmtResponse, checkMgmtRequest, encode, MGMT_API_VERSION, MGMT_FRAME_MAX_BYTES, MGMT_OPS,
  MGMT_PEEK_MAX_BYTES, MAX_VPS_PER_PARTITION, vmMigrationOf, type MgmtOp, type MgmtRequestDecoded,
} from '../src/index.js';

const frame = (value: unknown): Uint8Array => encode(value);
const req = (op: string, args?: unknown, id = 7): Record<string, unknown> => (args === undefined ? { v: MGMT_API_VERSION, id, op } : { v: MGMT_API_VERSION, id, op, args });

/** Decodes a request frame and asserts it was accepted; returns its args. */
function accepted(op: MgmtOp, args: unknown): unknown {
  const d = decodeMgmtRequest(frame(req(op, args)));
  if (!d.ok) expect.fail(`${op} ${JSON.stringify(args)} was refused: ${d.error.code} ${d.error.message}`);
  expect(d.request.op).to.equal(op);
  expect(d.request.id).to.equal(7);
  return d.request.args;
}

/** Decodes a request frame and asserts it was refused with `code`; returns the message. */
function refused(bytesOrValue: Uint8Array | Record<string, unknown>, code: string, id: number): string {
  const d = decodeMgmtRequest(bytesOrValue instanceof Uint8Array ? bytesOrValue : frame(bytesOrValue));
  if (d.ok) expect.fail(`accepted ${JSON.stringify(d.request)}`);
  expect(d.error.code, d.error.message).to.equal(code);
  expect(d.id).to.equal(id);
  return d.error.message;
}

const badArgs = (op: MgmtOp, args: unknown): string => refused(req(op, args), 'InvalidArgument', 7);

/** A map whose toString/valueOf are not functions: coercing it to a string or number throws. */
const trap = (): Record<string, unknown> => ({ toString: 1, valueOf: 1 });

/** What the CLI sends for each operation (packages/cli/src/main.ts), with undefined options left out. */
const CLI_REQUESTS: Array<[MgmtOp, Record<string, unknown>]> = [
  ['ping', {}],
  ['hostInfo', {}],
  ['hostMemory', {}],
  ['hostMemory', { collect: true }],
  ['vmList', {}],
  ['ps', {}],
  ['shutdown', {}],
  ['linkProbe', { peer: 'h2', pings: 10, bytes: 0, direct: false }],
  ['linkProbe', { peer: 'h2' }],
  ['linkProbeStop', { peer: 'h2' }],
  ['vmMove', { name: 'vm1', to: 'h2' }],
  ['vmMove', { name: 'vm1', to: 'h2', bandwidthBps: 104857600, downtimeLimitMs: 300, maxPasses: 10, compress: true, autoConverge: true, postcopy: false, offline: false }],
  ['vmMoveStatus', { name: 'vm1' }],
  ['vmMoveCancel', { name: 'vm1' }],
  ['vmMoveCancel', { name: 'vm1', force: true }],
  // What the nemesis sends (faults.ts specs).
  ['faultSet', { id: 'f1', vm: 'vm1', spec: { kind: 'vmbus', channel: 'kvp', drop: 0, delay: 1, duplicate: 0, reorder: 0, corrupt: 0, signalDrop: 0, signalDelay: 0, delayMs: 20, signalDelayMs: 0, seed: 3 }, forMs: 5000 }],
  ['faultSet', { id: 'f2', spec: { kind: 'lp-shrink', lps: 1 }, forMs: 5000 }],
  ['faultClear', { id: 'f1', vm: 'vm1' }],
  ['faultClear', {}],
  ['faultClear', { unnamed: true }],
  ['faultClear', { id: 'f1', host: true }],
  ['faultList', {}],
  ['vmNew', { name: 'a' }],
  ['vmNew', { name: 'a', memory: '16M', vps: '2', workload: 'counter:500', rtcOffset: '-3600' }],
  ['vmStart', { name: 'a' }],
  ['vmStop', { name: 'a', timeoutS: 30, force: false }],
  ['vmStop', { name: 'a', timeoutS: 0.5, force: true }],
  ['vmTurnOff', { name: 'a' }],
  ['vmPause', { name: 'a' }],
  ['vmResume', { name: 'a' }],
  ['vmSave', { name: 'a' }],
  ['vmStatus', { name: 'a' }],
  ['vmDelete', { name: 'a' }],
  ['vmSetProcessor', { name: 'a', weight: '200' }],
  ['vmSetProcessor', { name: 'a', reserve: '10', maximum: '50', weight: '1' }],
  ['vmPeek', { name: 'a', gpa: 0x1000, len: 16 }],
  ['vmIc', { name: 'a' }],
  ['vmIc', { name: 'a', enable: 'kvp' }],
  ['vmIc', { name: 'a', disable: 'heartbeat' }],
  ['vmKvp', { name: 'a', op: 'set', key: 'k', value: 'v' }],
  ['vmKvp', { name: 'a', op: 'get', key: 'k', pool: 'guest' }],
  ['vmKvp', { name: 'a', op: 'delete', key: 'k' }],
  ['vmKvp', { name: 'a', op: 'list', pool: 'auto' }],
  ['debugHypercall', { call: 'GetPartitionProperty', as: null, input: { partitionId: 1, property: 0x10 } }],
  ['debugHypercall', { call: '0x40', as: 'a', input: { bytes: new Uint8Array(4), big: 2n ** 60n, list: [1, 'x', null] } }],
];

describe('management API decoder', () => {
  describe('frames', () => {
    it('answers a single msgpack nil byte (0xc0) as BadRequest with id 0', () => {
      expect(refused(Uint8Array.of(0xc0), 'BadRequest', 0)).to.equal('a management request must be a map, not null');
    });

    it('refuses empty, truncated, trailing-garbage and non-msgpack frames as BadRequest with id 0', () => {
      refused(new Uint8Array(0), 'BadRequest', 0);
      const good = frame(req('ping', {}));
      refused(good.subarray(0, good.length - 1), 'BadRequest', 0);
      refused(Buffer.concat([good, Uint8Array.of(0xc0)]), 'BadRequest', 0);
      refused(Uint8Array.of(0xc1), 'BadRequest', 0);
      expect(refused(Uint8Array.of(0xd4, 0x65, 0x00), 'BadRequest', 0)).to.match(/not valid msgpack/);
    });

    it('refuses msgpack nested deeper than the stack as BadRequest, and decodes the next frame normally', () => {
      const deep = Buffer.concat([Buffer.alloc(200_000, 0x91), Uint8Array.of(0xc0)]);
      expect(refused(deep, 'BadRequest', 0)).to.match(/not valid msgpack/);
      expect(accepted('ping', {})).to.deep.equal({});
    });

    it(`refuses a frame over ${MGMT_FRAME_MAX_BYTES} bytes without decoding it`, () => {
      const big = frame(req('vmStatus', { name: 'x'.repeat(MGMT_FRAME_MAX_BYTES) }));
      expect(refused(big, 'BadRequest', 0)).to.equal(`the request frame of ${big.length} bytes exceeds the limit of ${MGMT_FRAME_MAX_BYTES}`);
    });

    it('refuses values that are not a map: list, number, string, bytes', () => {
      for (const v of [[1, 7, 'ping', {}], 1, 'ping', new Uint8Array(3), true]) {
        const d = decodeMgmtRequest(frame(v));
        expect(d.ok).to.equal(false);
        if (!d.ok) expect([d.error.code, d.id]).to.deep.equal(['BadRequest', 0]);
      }
    });
  });

  describe('request fields', () => {
    it('answers with id 0 when the id cannot be read: missing, negative, fractional, text, too big, a map with toString', () => {
      for (const id of [undefined, null, -1, 1.5, '7', 2 ** 53, Infinity, NaN, 7n, trap(), [7]]) {
        const m = refused({ v: 1, id, op: 'ping', args: {} }, 'BadRequest', 0);
        expect(m).to.match(/^request field id is /);
      }
    });

    it('keeps the id of a request whose version, fields or operation are wrong', () => {
      expect(refused({ v: 2, id: 9, op: 'ping', args: {} }, 'VersionMismatch', 9)).to.equal('management API version 2 is not supported; this host speaks 1');
      expect(refused({ v: 0, id: 9, op: 'whatever', extra: 1 }, 'VersionMismatch', 9)).to.match(/version 0 is not supported/);
      expect(refused({ v: '1', id: 9, op: 'ping', args: {} }, 'BadRequest', 9)).to.match(/request field v is the string "1"/);
      expect(refused({ id: 9, op: 'ping' }, 'BadRequest', 9)).to.match(/request field v is missing/);
      expect(refused({ v: 1, id: 9, op: 'ping', args: {}, pad: 0 }, 'BadRequest', 9)).to.match(/has no field "pad"/);
      expect(refused({ v: 1, id: 9, op: 7, args: {} }, 'BadRequest', 9)).to.match(/request field op is the number 7/);
      expect(refused({ v: 1, id: 9, op: trap(), args: {} }, 'BadRequest', 9)).to.match(/op is a map/);
      expect(refused({ v: 1, id: 9, op: 'vmFly', args: {} }, 'InvalidArgument', 9)).to.equal('unknown operation "vmFly"');
      expect(refused({ v: 1, id: 9, op: 'toString', args: {} }, 'InvalidArgument', 9)).to.equal('unknown operation "toString"');
    });

    it('accepts id 0 and the largest safe integer as request ids', () => {
      for (const id of [0, Number.MAX_SAFE_INTEGER]) {
        const d = decodeMgmtRequest(frame({ v: 1, id, op: 'ping', args: {} }));
        expect(d.ok && d.request.id).to.equal(id);
      }
    });

    it('takes absent args as no arguments, and refuses args that are not a map', () => {
      expect(accepted('vmList', undefined)).to.deep.equal({});
      expect(badArgs('vmList', [])).to.equal('the arguments of vmList must be a map, not a list of 0 values');
      expect(badArgs('vmList', null)).to.equal('the arguments of vmList must be a map, not null');
      expect(badArgs('vmStart', 'a')).to.match(/must be a map, not the string "a"/);
    });
  });

  describe('arguments', () => {
    it('accepts what the CLI sends for every operation', () => {
      const ops = new Set<string>();
      for (const [op, args] of CLI_REQUESTS) {
        accepted(op, args);
        ops.add(op);
      }
      expect([...ops].sort()).to.deep.equal([...MGMT_OPS].sort());
    });

    it('refuses an argument name the operation does not have, naming it', () => {
      expect(badArgs('vmNew', { name: 'y', memroy: '32M' })).to.equal('vmNew has no argument "memroy" (its arguments are name, memory, vps, workload, rtcOffset, id)');
      expect(badArgs('shutdown', { now: true })).to.equal('shutdown has no argument "now" (it takes no arguments)');
      expect(badArgs('vmList', { all: true })).to.match(/^vmList has no argument "all"/);
      expect(badArgs('vmStart', { name: 'a', force: true })).to.match(/^vmStart has no argument "force"/);
      expect(badArgs('vmStart', { name: 'a', toString: 1 })).to.match(/^vmStart has no argument "toString"/);
      expect(badArgs('hostMemory', { gc: true })).to.equal('hostMemory has no argument "gc" (its arguments are collect)');
      expect(badArgs('hostMemory', { collect: 1 })).to.match(/^hostMemory argument "collect" is the number 1, not a boolean/);
    });

    it('refuses weight [5] and every other non-number for the processor settings, accepting digits and safe integers', () => {
      expect(badArgs('vmSetProcessor', { name: 'a', weight: [5] })).to.equal('vmSetProcessor argument "weight" is a list of 1 values, not a whole number from 1 to 10000 (a number or its digits)');
      for (const weight of ['1e2', ' 5', '5 ', '0x10', '+5', '', 5.5, NaN, Infinity, 1e999, true, trap(), { valueOf: 5 }, 5n, new Uint8Array([5])]) {
        expect(badArgs('vmSetProcessor', { name: 'a', weight })).to.match(/^vmSetProcessor argument "weight" is .*, not a whole number from 1 to 10000/);
      }
      expect(badArgs('vmSetProcessor', { name: 'a', weight: 0 })).to.match(/is the number 0, not a whole number from 1 to 10000/);
      expect(badArgs('vmSetProcessor', { name: 'a', weight: '10001' })).to.match(/is the string "10001"/);
      expect(badArgs('vmSetProcessor', { name: 'a', reserve: -1 })).to.match(/"reserve" is the number -1, not a whole number from 0 to 100/);
      expect(badArgs('vmSetProcessor', { name: 'a', maximum: '0' })).to.match(/"maximum" is the string "0", not a whole number from 1 to 100/);
      expect(accepted('vmSetProcessor', { name: 'a', weight: '5', reserve: 0, maximum: '007' })).to.deep.equal({ name: 'a', weight: 5, reserve: 0, maximum: 7 });
    });

    it('refuses a KVP key or value that is not a string, and arguments the KVP operation does not take', () => {
      expect(badArgs('vmKvp', { name: 'a', op: 'set', key: { a: 1 }, value: 'v' })).to.equal('vmKvp argument "key" is a map, not a string of at most 4096 characters');
      expect(badArgs('vmKvp', { name: 'a', op: 'set', key: 'k', value: 5 })).to.match(/"value" is the number 5, not a string/);
      expect(badArgs('vmKvp', { name: 'a', op: 'set', key: trap(), value: 'v' })).to.match(/"key" is a map/);
      expect(badArgs('vmKvp', { name: 'a', op: 'get', key: ['k'] })).to.match(/"key" is a list of 1 values/);
      expect(badArgs('vmKvp', { name: 'a', op: 'set', key: 'k' })).to.equal('vmKvp needs argument "value": a string of at most 4096 characters');
      expect(badArgs('vmKvp', { name: 'a', op: 'get' })).to.match(/needs argument "key"/);
      expect(badArgs('vmKvp', { name: 'a', op: 'get', key: 'k', value: 'v' })).to.equal('vmKvp get takes no argument "value"');
      expect(badArgs('vmKvp', { name: 'a', op: 'list', key: 'k' })).to.equal('vmKvp list takes no argument "key"');
      expect(badArgs('vmKvp', { name: 'a', op: 'put', key: 'k' })).to.match(/"op" is the string "put", not one of set, get, delete, list/);
      expect(badArgs('vmKvp', { name: 'a', key: 'k' })).to.match(/needs argument "op"/);
      expect(badArgs('vmKvp', { name: 'a', op: 'list', pool: 'host' })).to.match(/"pool" is the string "host", not one of external, guest, auto/);
      expect(badArgs('vmKvp', { name: 'a', op: 'set', key: 'k', value: 'x'.repeat(4097) })).to.match(/"value" is a string of 4097 characters/);
      expect(accepted('vmKvp', { name: 'a', op: 'set', key: 'k', value: '', pool: null })).to.deep.equal({ name: 'a', op: 'set', key: 'k', value: '' });
    });

    it('faultClear "unnamed" (the host\'s LP shrink that names no fault) takes neither an id nor a VM', () => {
      expect(accepted('faultClear', { unnamed: true })).to.deep.equal({ unnamed: true });
      expect(accepted('faultClear', { unnamed: false, id: 'unknown' }), 'false: not given').to.deep.equal({ id: 'unknown' });
      expect(badArgs('faultClear', { unnamed: true, id: 'unknown' })).to.equal('faultClear: "unnamed" ends the host\'s LP shrink that names no fault: it takes no "id" or "vm"');
      expect(badArgs('faultClear', { unnamed: true, vm: 'a' })).to.match(/takes no "id" or "vm"/);
      expect(badArgs('faultClear', { unnamed: 'yes' })).to.match(/"unnamed" is the string "yes", not a boolean/);
    });

    it('faultClear "host" (the host\'s LP shrink of that fault, no VM\'s) needs an id and takes no VM', () => {
      expect(accepted('faultClear', { id: 'f1', host: true })).to.deep.equal({ id: 'f1', host: true });
      expect(accepted('faultClear', { id: 'f1', host: false }), 'false: not given').to.deep.equal({ id: 'f1' });
      expect(badArgs('faultClear', { host: true })).to.equal('faultClear: "host" ends the host\'s LP shrink of fault "id" and no VM\'s fault: it needs "id" and takes no "vm"');
      expect(badArgs('faultClear', { id: 'f1', vm: 'a', host: true })).to.match(/needs "id" and takes no "vm"/);
      expect(badArgs('faultClear', { unnamed: true, host: true })).to.match(/"unnamed" and "host" are two ways/);
      expect(badArgs('faultClear', { id: 'f1', host: 1 })).to.match(/"host" is the number 1, not a boolean/);
    });

    it('takes a VM id (a UUID, as lower case) for vmNew, vmTurnOff and vmDelete, and nothing else as one', () => {
      const id = '3F2B8C1E-0A4D-4E5F-9A7B-1C2D3E4F5A6B';
      expect(accepted('vmNew', { name: 'a', id })).to.deep.equal({ name: 'a', id: id.toLowerCase() });
      expect(accepted('vmTurnOff', { name: 'a', id })).to.deep.equal({ name: 'a', id: id.toLowerCase() });
      expect(accepted('vmDelete', { name: 'a', id: null }), 'null: not given').to.deep.equal({ name: 'a' });
      for (const bad of ['', 'x', id.slice(1), `${id} `, id.replace(/-/g, ''), 7, [id], trap(), new Uint8Array(16)]) {
        expect(badArgs('vmDelete', { name: 'a', id: bad })).to.match(/^vmDelete argument "id" is .*, not a VM id \(a UUID\)$/);
      }
      expect(badArgs('vmStart', { name: 'a', id })).to.match(/^vmStart has no argument "id"/);
    });

    it('refuses VM names that are not strings or not names, without echoing a long one', () => {
      expect(badArgs('vmStart', { name: 5 })).to.equal('vmStart argument "name" is the number 5, not a VM name');
      expect(badArgs('vmStart', { name: trap() })).to.equal('vmStart argument "name" is a map, not a VM name');
      expect(badArgs('vmStart', {})).to.equal('vmStart needs argument "name": a VM name');
      expect(badArgs('vmStart', { name: null })).to.equal('vmStart needs argument "name": a VM name (it is null)');
      expect(badArgs('vmNew', { name: 'bad/name' })).to.equal('VM name "bad/name" is invalid: use 1-63 letters, digits, \'.\', \'_\' or \'-\', starting with a letter or digit');
      expect(badArgs('vmStatus', { name: 'a'.repeat(64) })).to.match(/^VM name "a{64}" is invalid/);
      expect(badArgs('vmStatus', { name: 'b'.repeat(100_000) }).length).to.be.below(200);
    });

    it('checks vmNew: digits or numbers for vps and rtcOffset, text or bytes for memory', () => {
      expect(accepted('vmNew', { name: 'a', memory: 16777216, vps: 2, rtcOffset: -5 })).to.deep.equal({ name: 'a', memory: '16777216', vps: 2, rtcOffset: -5 });
      expect(accepted('vmNew', { name: 'a', vps: '64', rtcOffset: '315360000', workload: undefined })).to.deep.equal({ name: 'a', vps: MAX_VPS_PER_PARTITION, rtcOffset: 315360000 });
      expect(badArgs('vmNew', { name: 'a', vps: '2x' })).to.match(/"vps" is the string "2x", not a whole number from 1 to 64/);
      expect(badArgs('vmNew', { name: 'a', vps: 65 })).to.match(/"vps" is the number 65/);
      expect(badArgs('vmNew', { name: 'a', vps: [2] })).to.match(/"vps" is a list of 1 values/);
      expect(badArgs('vmNew', { name: 'a', memory: {} })).to.match(/"memory" is a map, not a string of 1 to 32 characters/);
      expect(badArgs('vmNew', { name: 'a', memory: -4096 })).to.match(/"memory" is the number -4096, not a size/);
      expect(badArgs('vmNew', { name: 'a', memory: 1.5 })).to.match(/"memory" is the number 1.5/);
      expect(badArgs('vmNew', { name: 'a', memory: '' })).to.match(/"memory" is the string ""/);
      expect(badArgs('vmNew', { name: 'a', workload: 7 })).to.match(/"workload" is the number 7/);
      expect(badArgs('vmNew', { name: 'a', rtcOffset: '1.5' })).to.match(/"rtcOffset" is the string "1.5"/);
      expect(badArgs('vmNew', { name: 'a', rtcOffset: 315360001 })).to.match(/"rtcOffset" is the number 315360001/);
    });

    it('checks vmStop, vmPeek, vmIc and debugHypercall arguments by type and range', () => {
      for (const timeoutS of [0, -1, NaN, Infinity, 3601, '30', true]) expect(badArgs('vmStop', { name: 'a', timeoutS })).to.match(/"timeoutS" is .*, not a number of seconds above 0 and at most 3600/);
      expect(badArgs('vmStop', { name: 'a', force: 'yes' })).to.equal('vmStop argument "force" is the string "yes", not a boolean');
      expect(badArgs('vmPeek', { name: 'a', len: 16 })).to.match(/needs argument "gpa"/);
      expect(badArgs('vmPeek', { name: 'a', gpa: '0', len: 16 })).to.match(/"gpa" is the string "0", not a whole number/);
      expect(badArgs('vmPeek', { name: 'a', gpa: 2 ** 53, len: 16 })).to.match(/"gpa" is the number/);
      expect(badArgs('vmPeek', { name: 'a', gpa: 0, len: 0 })).to.match(/"len" is the number 0, not a whole number from 1 to 16777216/);
      expect(badArgs('vmPeek', { name: 'a', gpa: 0, len: MGMT_PEEK_MAX_BYTES + 1 })).to.match(/"len" is the number/);
      expect(badArgs('vmIc', { name: 'a', enable: 'vss' })).to.match(/"enable" is the string "vss", not one of heartbeat, shutdown, timesync, kvp/);
      expect(badArgs('vmIc', { name: 'a', enable: 'kvp', disable: 'kvp' })).to.equal('vmIc takes enable or disable, not both');
      expect(badArgs('debugHypercall', { call: 0x40 })).to.match(/"call" is the number 64, not a string/);
      expect(badArgs('debugHypercall', { call: 'X', as: {} })).to.match(/"as" is a map, not a VM name/);
      expect(badArgs('debugHypercall', { call: 'X', input: [1] })).to.match(/"input" is a list of 1 values, not a map/);
      let deep: unknown = 1;
      for (let i = 0; i < 40; i++) deep = { d: deep };
      expect(badArgs('debugHypercall', { call: 'X', input: deep })).to.match(/nested deeper than 16 levels/);
      expect(badArgs('debugHypercall', { call: 'X', input: { when: new Date(0) } })).to.match(/not plain data/);
    });

    it('takes null for an optional argument as not given', () => {
      expect(accepted('vmStop', { name: 'a', timeoutS: null, force: null })).to.deep.equal({ name: 'a' });
      expect(accepted('debugHypercall', { call: 'X', as: null, input: null })).to.deep.equal({ call: 'X' });
    });
  });

  describe('properties', () => {
    const codes = ['BadRequest', 'VersionMismatch', 'InvalidArgument'];
    const wellFormed = (d: MgmtRequestDecoded): void => {
      if (d.ok) return;
      expect(codes).to.include(d.error.code);
      expect(Number.isSafeInteger(d.id) && d.id >= 0).to.equal(true);
      expect(d.error.message).to.be.a('string');
      expect(d.error.message.length).to.be.below(600);
    };

    it('never throws on random bytes, and refuses them with a known code', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 256 }), (b) => wellFormed(decodeMgmtRequest(b))), { numRuns: 3000 });
    });

    it('never throws on any value in place of the request, or of any operation\'s arguments', () => {
      const anything = fc.anything({ withBigInt: true, withTypedArray: true, withDate: true, withNullPrototype: true, withObjectString: true, maxDepth: 4 });
      fc.assert(fc.property(anything, (v) => wellFormed(checkMgmtRequest(v))), { numRuns: 1000 });
      fc.assert(fc.property(fc.constantFrom(...MGMT_OPS), anything, (op, v) => {
        const d = decodeMgmtArgs(op, v);
        if (!d.ok) expect(d.message).to.be.a('string');
      }), { numRuns: 3000 });
    });

    it('accepts a decoded request again unchanged, for mutations of every valid request', () => {
      const weird = fc.oneof(
        fc.constantFrom<unknown>(null, undefined, true, 0, -1, 1.5, NaN, Infinity, 2 ** 53, '', '5', 'kvp', 'a', [5], {}, trap()),
        fc.string({ maxLength: 8 }), fc.integer(), fc.double(),
      );
      const mutated = fc.tuple(fc.constantFrom(...CLI_REQUESTS), fc.constantFrom('name', 'memory', 'vps', 'weight', 'key', 'value', 'op', 'pool', 'gpa', 'len', 'timeoutS', 'force', 'enable', 'as', 'input', 'call'), weird)
        .map(([[op, args], k, v]) => ({ v: 1, id: 3, op, args: { ...args, [k]: v } }));
      fc.assert(fc.property(mutated, (m) => {
        const d = decodeMgmtRequest(frame(m));
        wellFormed(d);
        if (!d.ok) return;
        const again = decodeMgmtRequest(frame(d.request));
        expect(again).to.deep.equal(d);
        // Nothing undefined or null is handed on: absent arguments are absent.
        for (const val of Object.values(d.request.args)) expect(val === undefined || val === null).to.equal(false);
      }), { numRuns: 4000 });
    });

    it('hands on exactly the arguments the CLI sent, with the digits it sends for numbers as numbers', () => {
      const textNumbers = new Set(['vps', 'rtcOffset', 'reserve', 'maximum', 'weight']);
      for (const [op, args] of CLI_REQUESTS) {
        const want = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== null).map(([k, v]) => [k, textNumbers.has(k) ? Number(v) : v]));
        expect(accepted(op, args), op).to.deep.equal(want);
      }
    });
  });
});

describe('management API answers, as the CLI decodes them', () => {
  it('takes an answer and an error answer, and keeps a bad error answer\'s id with no error', () => {
    expect(decodeMgmtResponse(frame({ id: 3, ok: true, result: { a: 1 } }))).to.deep.equal({ id: 3, ok: true, result: { a: 1 } });
    expect(decodeMgmtResponse(frame({ id: 3, ok: false, error: { code: 'NotFound', message: 'no' } }))).to.deep.equal({ id: 3, ok: false, error: { code: 'NotFound', message: 'no' } });
    expect(decodeMgmtResponse(frame({ id: 3, ok: false, error: { code: 7, message: 'no' } }))).to.deep.equal({ id: 3, ok: false, error: null });
    expect(decodeMgmtResponse(frame({ id: 3, ok: false, error: { code: 'x'.repeat(65), message: '' } }))).to.deep.equal({ id: 3, ok: false, error: null });
    expect((decodeMgmtResponse(frame({ id: 3, ok: false, error: { code: 'E', message: 'm'.repeat(10000) } })) as { error: { message: string } }).error.message).to.have.length(4000);
    for (const bad of [{ id: 0, ok: true }, { id: -1, ok: true }, { id: 1.5, ok: true }, { id: '3', ok: true }, { id: 3, ok: 1 }, { id: 3 }, [3, true], null, 'ok']) {
      expect(decodeMgmtResponse(frame(bad)), JSON.stringify(bad)).to.equal(null);
    }
  });

  it('never throws on random bytes or on any value in place of the answer (fuzzed)', () => {
    const wellFormed = (a: ReturnType<typeof decodeMgmtResponse>): boolean => {
      if (a === null) return true;
      if (!Number.isSafeInteger(a.id) || a.id < 1) return false;
      if (a.ok) return true;
      return a.error === null || (typeof a.error.code === 'string' && a.error.code.length <= 64 && typeof a.error.message === 'string' && a.error.message.length <= 4000);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 256 }), (b) => wellFormed(decodeMgmtResponse(b))), { numRuns: 3000, seed: 0x7e5 });
    const anything = fc.anything({ withBigInt: true, withTypedArray: true, withDate: true, withNullPrototype: true, withObjectString: true, maxDepth: 4 });
    const answerish = fc.record({ id: fc.oneof(fc.integer(), anything), ok: fc.oneof(fc.boolean(), anything), result: anything, error: fc.oneof(fc.record({ code: fc.oneof(fc.string(), anything), message: fc.oneof(fc.string(), anything) }), anything) }, { requiredKeys: [] });
    fc.assert(fc.property(fc.oneof(anything, answerish), (v) => {
      let bytes: Uint8Array;
      try {
        bytes = frame(v);
      } catch {
        return true; // not encodable: never reaches the CLI
      }
      return wellFormed(decodeMgmtResponse(bytes));
    }), { numRuns: 2000, seed: 0x7e6 });
  });
});

describe('a VM\'s migration mark in a vmList answer (vmMigrationOf)', () => {
  it('reads incoming and outgoing marks and null; anything else, or none, is unknown (undefined)', () => {
    expect(vmMigrationOf({ name: 'a', migration: { direction: 'incoming', from: 'h1' } })).to.deep.equal({ direction: 'incoming', from: 'h1' });
    expect(vmMigrationOf({ name: 'a', migration: { direction: 'outgoing', to: 'h-2' } })).to.deep.equal({ direction: 'outgoing', to: 'h-2' });
    expect(vmMigrationOf({ name: 'a', migration: { direction: 'incoming', from: 'h1', switched: true } })).to.deep.equal({ direction: 'incoming', from: 'h1', switched: true });
    expect(vmMigrationOf({ name: 'a', migration: { direction: 'outgoing', to: 'h2', switched: true } })).to.deep.equal({ direction: 'outgoing', to: 'h2', switched: true });
    expect(vmMigrationOf({ name: 'a', migration: null })).to.equal(null);
    // A root before the field says nothing: not "not moving".
    expect(vmMigrationOf({ name: 'a' })).to.equal(undefined);
    for (const bad of [
      'incoming', 1, [], { direction: 'incoming' }, { direction: 'incoming', to: 'h1' }, { direction: 'outgoing', from: 'h1' },
      { direction: 'incoming', from: 'H1' }, { direction: 'incoming', from: 'h'.repeat(11) }, { direction: 'incoming', from: 7 },
      { direction: 'sideways', from: 'h1' }, { direction: 'incoming', from: 'h1', to: 'h2' }, { direction: 'incoming', from: 'h1', extra: 1 },
      { direction: 'incoming', from: 'h1', switched: false }, { direction: 'outgoing', to: 'h2', switched: 1 }, { direction: 'incoming', switched: true },
      { direction: 'incoming', from: 'h1', switched: true, extra: 1 },
      new Map([['direction', 'incoming'], ['from', 'h1']]),
    ]) expect(vmMigrationOf({ name: 'a', migration: bad }), JSON.stringify(bad) ?? String(bad)).to.equal(undefined);
    for (const notVm of [null, undefined, 'a', 3, [], Object.create({ migration: null }) as unknown]) expect(vmMigrationOf(notVm)).to.equal(undefined);
  });

  it('never throws, whatever the answer holds (fuzzed)', () => {
    fc.assert(fc.property(fc.anything(), fc.anything(), (vm, migration) => {
      const a = vmMigrationOf(vm);
      const b = vmMigrationOf({ name: 'a', migration });
      return (a === undefined || a === null || typeof a === 'object') && (b === undefined || b === null || typeof b === 'object');
    }), { numRuns: 2000, seed: 0x51d });
  });
});
