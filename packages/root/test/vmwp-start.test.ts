import { expect } from 'chai';
import fc from 'fast-check';
import { decodeVmwpClaim, decodeVmwpStartInput } from '../src/vmwp/shared.js';

const good = {
  ticket: 't', secret: 's',
  config: {
    home: '/h', hostId: 'abc123', hvPid: 10, name: 'a', id: 'i', memoryBytes: 8388608, vps: 1, workload: 'counter',
    processor: { reserve: 0, maximum: 100, weight: 100 }, rtcOffsetS: 0, vmDir: '/h/vms', restore: false,
    devices: [{ class: 'kvp', id: 'kvp', enabled: false }], vmbusTransport: 'shm',
  },
};

describe('the VMWP start-up input decoder', () => {
  it('accepts what VMMS writes and refuses each field of the wrong type or range', () => {
    expect(decodeVmwpStartInput(JSON.stringify(good)).config.devices).to.deep.equal([{ class: 'kvp', id: 'kvp', enabled: false }]);
    const bad: Array<[string, unknown]> = [['vps', 0], ['vps', '1'], ['hvPid', 1e999], ['memoryBytes', -1], ['restore', 'no'], ['vmbusTransport', 'tcp'], ['name', { toString: 1 }], ['devices', [{ class: 'floppy', id: 'f', enabled: true }]]];
    for (const [k, v] of bad) {
      expect(() => decodeVmwpStartInput(JSON.stringify({ ...good, config: { ...good.config, [k]: v } })), k).to.throw(Error, new RegExp(k));
    }
    expect(() => decodeVmwpStartInput('{')).to.throw(/not JSON/);
  });

  it('a migration destination\'s stream: its id, source, credential, address and key are checked', () => {
    const key = { version: 1, cluster: 'lab', publicKey: 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7', secretKey: 'JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6' };
    const stream = { mig: 'abcdef0123456789', from: 'h1', auth: '0f'.repeat(32), address: '10.9.0.2', key };
    const with_ = (v: unknown): string => JSON.stringify({ ...good, config: { ...good.config, incoming: true, incomingStream: v } });
    expect(decodeVmwpStartInput(with_(stream)).config.incomingStream).to.deep.equal(stream);
    expect(decodeVmwpStartInput(JSON.stringify(good)).config.incomingStream).to.equal(undefined);
    const bad: Array<[unknown, RegExp]> = [
      [{ ...stream, mig: 'UPPER-CASE-ID' }, /mig/], [{ ...stream, from: 'H 1' }, /from/], [{ ...stream, auth: 'x' }, /auth/], [{ ...stream, auth: undefined }, /auth/], [{ ...stream, address: '10.9.0.300' }, /address/],
      [{ ...stream, key: { ...key, publicKey: 'short' } }, /key/], [{ ...stream, key: null }, /key/], ['stream', /incomingStream/],
    ];
    for (const [v, re] of bad) expect(() => decodeVmwpStartInput(with_(v)), JSON.stringify(v)).to.throw(Error, re);
  });

  it('never throws anything but an Error on random or mutated input', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.jsonValue().map((v) => JSON.stringify(v)), fc.jsonValue().map((v) => JSON.stringify({ ...good, config: { ...good.config, processor: v } })), fc.jsonValue().map((v) => JSON.stringify({ ...good, config: { ...good.config, incomingStream: v } }))), (t) => {
      try { decodeVmwpStartInput(t); } catch (e) { expect(e).to.be.instanceOf(Error); }
    }), { numRuns: 3000 });
  });

  it('a booted warm worker\'s lines: the template flag and the instance seed are checked, and the claim is decoded as the config is', () => {
    expect(decodeVmwpStartInput(JSON.stringify({ ...good, template: true })).template).to.equal(true);
    expect(decodeVmwpStartInput(JSON.stringify(good)).template).to.equal(undefined);
    expect(() => decodeVmwpStartInput(JSON.stringify({ ...good, template: 'yes' }))).to.throw(/template/);
    expect(decodeVmwpClaim(JSON.stringify({ config: { ...good.config, instanceSeed: 'seed' } })).config.instanceSeed).to.equal('seed');
    expect(() => decodeVmwpClaim(JSON.stringify({ config: { ...good.config, instanceSeed: 7 } }))).to.throw(/instanceSeed/);
    expect(() => decodeVmwpClaim(JSON.stringify({ config: { ...good.config, vps: 0 } }))).to.throw(/vps/);
    expect(() => decodeVmwpClaim('null')).to.throw(/the claim is not a map/);
  });

  it('the claim decoder never throws anything but an Error on random or mutated input', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.jsonValue().map((v) => JSON.stringify(v)), fc.jsonValue().map((v) => JSON.stringify({ config: { ...good.config, instanceSeed: v } })), fc.jsonValue().map((v) => JSON.stringify({ config: v }))), (t) => {
      try { decodeVmwpClaim(t); } catch (e) { expect(e).to.be.instanceOf(Error); }
    }), { numRuns: 3000 });
  });
});
