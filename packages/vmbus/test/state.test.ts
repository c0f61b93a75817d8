import { expect } from 'chai';
import fc from 'fast-check';
import {
  MemoryFrameNetwork, PacketType, VmbusLoopback, VmbusStateError, decodeVmbusClientState, decodeVmbusServerState, checkedClientState, checkedServerState,
  MAX_SAVED_CHANNELS, type VmbusChannel, type VmbusClientState, type VmbusDevice, type VmbusDriver, type VmbusServerState,
} from '../src/index.js';

const ECHO_GUID = '11111111-2222-3333-4444-555555555555';
const OTHER_GUID = '66666666-7777-8888-9999-000000000000';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (b: Uint8Array): string => new TextDecoder().decode(b).replace(/\0+$/, '');

/** A device that records what it gets and what was asked of it (open or reopen). */
class RecordingDevice implements VmbusDevice {
  readonly interfaceInstance: string;
  channel: VmbusChannel | null = null;
  readonly got: string[] = [];
  opens = 0;
  reopens = 0;
  constructor(readonly name: string, readonly interfaceType: string) {
    this.interfaceInstance = interfaceType.replace(/^./, 'a');
  }
  private take(channel: VmbusChannel): void {
    this.channel = channel;
    channel.onPacket = (_t, _f, _id, payload) => this.got.push(str(payload));
  }
  open(channel: VmbusChannel): void {
    this.opens++;
    this.take(channel);
  }
  reopen(channel: VmbusChannel): void {
    this.reopens++;
    this.take(channel);
  }
  close(): void {
    this.channel = null;
  }
}

class RecordingDriver implements VmbusDriver {
  channel: VmbusChannel | null = null;
  readonly got: string[] = [];
  attaches = 0;
  reattaches = 0;
  constructor(readonly name: string, readonly interfaceType: string, readonly ringBytes = 16384) {}
  private take(channel: VmbusChannel): void {
    this.channel = channel;
    channel.onPacket = (_t, _f, _id, payload) => this.got.push(str(payload));
  }
  attach(channel: VmbusChannel): void {
    this.attaches++;
    this.take(channel);
  }
  reattach(channel: VmbusChannel): void {
    this.reattaches++;
    this.take(channel);
  }
  detach(): void {
    this.channel = null;
  }
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const turns = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** Through JSON and the checking decoders, as a saved VM on disk would go. */
function throughDisk(server: VmbusServerState, client: VmbusClientState): { server: VmbusServerState; client: VmbusClientState } {
  const s = decodeVmbusServerState(JSON.parse(JSON.stringify(server)));
  const c = decodeVmbusClientState(JSON.parse(JSON.stringify(client)));
  if (typeof s === 'string') throw new Error(s);
  if (typeof c === 'string') throw new Error(c);
  return { server: s, client: c };
}

interface Pair {
  lb: VmbusLoopback;
  devs: RecordingDevice[];
  drvs: RecordingDriver[];
  hold: { host: boolean };
}

function pair(transport: 'shm' | 'remote', extra: { memory?: SharedArrayBuffer; nextFreePage?: number; frames?: MemoryFrameNetwork } = {}): Pair {
  const hold = { host: false };
  const lb = new VmbusLoopback({
    transport, frames: extra.frames ?? new MemoryFrameNetwork(),
    ...(extra.memory ? { memory: extra.memory } : {}), ...(extra.nextFreePage !== undefined ? { nextFreePage: extra.nextFreePage } : {}),
    // Guest-to-host signals can be held back: the host then does not see what the guest wrote.
    faults: { toHost: (deliver) => { if (!hold.host) deliver(); } },
  });
  const devs = [new RecordingDevice('echo', ECHO_GUID), new RecordingDevice('other', OTHER_GUID)];
  const drvs = [new RecordingDriver('echo', ECHO_GUID), new RecordingDriver('other', OTHER_GUID)];
  for (const d of drvs) lb.client.register(d);
  return { lb, devs, drvs, hold };
}

async function addDevices(p: Pair): Promise<void> {
  await p.lb.start();
  for (const d of p.devs) await p.lb.server.addDevice(d);
}

describe('VMBus save and restore (in-process host and guest)', function () {
  this.timeout(30000);
  const open: VmbusLoopback[] = [];
  afterEach(() => {
    for (const lb of open.splice(0)) lb.close();
  });

  /** A pair over rings with its devices added and every channel open (closed after the test). */
  async function connected(): Promise<Pair> {
    const a = pair('shm');
    open.push(a.lb);
    await addDevices(a);
    await a.lb.client.connect();
    await until(() => a.drvs.every((d) => d.channel !== null));
    return a;
  }

  /**
   * A's guest memory copied into a new pair with its devices added, as a migration's destination
   * gets it; A is closed (idle first, saved through disk): the new pair and what A saved.
   */
  async function moveToNewPair(a: Pair): Promise<{ b: Pair; saved: ReturnType<typeof throughDisk> }> {
    await a.lb.server.whenIdle();
    await a.lb.client.whenIdle();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    const memory = new SharedArrayBuffer(a.lb.memory.byteLength);
    new Uint8Array(memory).set(new Uint8Array(a.lb.memory));
    const nextFreePage = a.lb.nextFreePage;
    open.splice(open.indexOf(a.lb), 1);
    a.lb.close();
    const b = pair('shm', { memory, nextFreePage });
    open.push(b.lb);
    await addDevices(b);
    return { b, saved };
  }

  it('a restored pair keeps its channels and unread packets and exchanges no channel message', async () => {
    const a = await connected();
    const [dev] = a.devs;
    const [drv, otherDrv] = a.drvs;
    drv.channel!.send(PacketType.DataInband, 0, 1n, text('before'));
    dev.channel!.send(PacketType.DataInband, 0, 2n, text('before-h'));
    await until(() => dev.got.length === 1 && drv.got.length === 1);

    // The VM is about to be suspended: signals each way stop being seen, so what is written now
    // stays unread in the rings, and the guest writes more than its 16 KiB ring holds, so the
    // rest waits in its channel's queue (state that lives outside guest memory).
    a.lb.holdGuestSignals = true;
    a.hold.host = true;
    for (let i = 0; i < 3; i++) dev.channel!.send(PacketType.DataInband, 0, BigInt(10 + i), text(`h2g-${i}`));
    const bulk = 24;
    for (let i = 0; i < bulk; i++) drv.channel!.send(PacketType.DataInband, 0, BigInt(100 + i), text(`g2h-${i}`.padEnd(1000, '.')));
    otherDrv.channel!.send(PacketType.DataInband, 0, 7n, text('other-g2h'));
    await turns();
    expect(dev.got).to.deep.equal(['before']);
    expect(drv.got).to.deep.equal(['before-h']);
    expect(drv.channel!.stats.queued, 'packets waiting in the guest channel queue').to.be.greaterThan(0);

    await a.lb.server.whenIdle();
    await a.lb.client.whenIdle();
    const server = a.lb.server.save();
    const client = a.lb.client.save();
    // save() reads only: a second save is the same.
    expect(a.lb.server.save()).to.deep.equal(server);
    expect(a.lb.client.save()).to.deep.equal(client);
    const memory = new SharedArrayBuffer(a.lb.memory.byteLength);
    new Uint8Array(memory).set(new Uint8Array(a.lb.memory));
    const nextFreePage = a.lb.nextFreePage;
    open.splice(open.indexOf(a.lb), 1);
    a.lb.close();
    expect(server.channels.map((c) => [c.relid, c.state, c.transport])).to.deep.equal([[1, 'open', 'shm'], [2, 'open', 'shm']]);
    expect(server.gpadls.length).to.equal(2);
    expect(client.channels.find((c) => c.relid === 1)!.queued.length, 'the guest queue is saved').to.equal(drv.channel!.stats.queued);
    const saved = throughDisk(server, client);

    // The restored VM: new processes over the same memory.
    const b = pair('shm', { memory, nextFreePage });
    open.push(b.lb);
    await addDevices(b);
    expect(b.lb.toGuest, 'adding devices before restore offers nothing').to.have.length(0);
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    const [dev2, otherDev2] = b.devs;
    const [drv2, otherDrv2] = b.drvs;
    expect(b.lb.mapped.size, 'GPADLs mapped again').to.equal(2);

    const g2h = Array.from({ length: bulk }, (_, i) => `g2h-${i}`.padEnd(1000, '.'));
    await until(() => dev2.got.length === bulk && drv2.got.length === 3 && otherDev2.got.length === 1);
    expect(dev2.got, 'the guest packets the host had not read, then those the guest had queued, in order').to.deep.equal(g2h);
    expect(drv2.got, 'the host packets the guest had not read').to.deep.equal(['h2g-0', 'h2g-1', 'h2g-2']);
    expect(otherDev2.got).to.deep.equal(['other-g2h']);

    drv2.channel!.send(PacketType.DataInband, 0, 200n, text('after'));
    dev2.channel!.send(PacketType.DataInband, 0, 201n, text('after-h'));
    otherDev2.channel!.send(PacketType.DataInband, 0, 202n, text('other-after-h'));
    await until(() => dev2.got.length === bulk + 1 && drv2.got.length === 4 && otherDrv2.got.length === 1);
    expect(dev2.got[bulk]).to.equal('after');
    expect(drv2.got[3]).to.equal('after-h');
    expect(otherDrv2.got).to.deep.equal(['other-after-h']);

    expect(b.lb.toGuest, 'no channel message host to guest after restore').to.have.length(0);
    expect(b.lb.toHost, 'no channel message guest to host after restore').to.have.length(0);
    expect(b.devs.map((d) => [d.opens, d.reopens])).to.deep.equal([[0, 1], [0, 1]]);
    expect(b.drvs.map((d) => [d.attaches, d.reattaches])).to.deep.equal([[0, 1], [0, 1]]);
    expect(b.lb.server.connected).to.equal(true);
    expect(b.lb.client.version).to.equal(saved.client.negotiatedVersion);
    // Counters carry on from the saved ones: 1 before + bulk + 1 after arrived at the echo device.
    const info = b.lb.server.channelInfo().find((c) => c.relid === 1)!;
    expect(info.packetsIn).to.equal(1 + bulk + 1);
    expect(info.opens).to.equal(1);
  });

  it('a restored pair can close and unload as usual', async () => {
    const a = await connected();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    const memory = new SharedArrayBuffer(a.lb.memory.byteLength);
    new Uint8Array(memory).set(new Uint8Array(a.lb.memory));
    const b = pair('shm', { memory, nextFreePage: a.lb.nextFreePage });
    open.push(b.lb);
    await addDevices(b);
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    await b.lb.client.disconnect();
    expect(b.lb.mapped.size, 'GPADLs torn down').to.equal(0);
    expect(b.lb.server.connected).to.equal(false);
    // The host's GPADL and channel bookkeeping agreed with the guest's: nothing was refused.
    expect(b.lb.server.stats.rejected).to.equal(0);
  });

  it('remote channels reopen at both ends with their open id and carry packets both ways', async () => {
    const frames = new MemoryFrameNetwork();
    const a = pair('remote', { frames });
    open.push(a.lb);
    await addDevices(a);
    await a.lb.client.connect();
    await until(() => a.drvs.every((d) => d.channel !== null));
    a.drvs[0].channel!.send(PacketType.DataInband, 0, 1n, text('before'));
    await until(() => a.devs[0].got.length === 1);
    await a.lb.server.whenIdle();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    expect(saved.server.channels.map((c) => c.transport)).to.deep.equal(['remote', 'remote']);
    expect(saved.client.channels.map((c) => [c.transport, c.remoteWindow])).to.deep.equal([['remote', 16384], ['remote', 16384]]);
    open.splice(open.indexOf(a.lb), 1);
    a.lb.close();

    const b = pair('remote', { frames });
    open.push(b.lb);
    await addDevices(b);
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    b.drvs[0].channel!.send(PacketType.DataInband, 0, 2n, text('after'));
    b.devs[1].channel!.send(PacketType.DataInband, 0, 3n, text('after-h'));
    await until(() => b.devs[0].got.length === 1 && b.drvs[1].got.length === 1);
    expect(b.devs[0].got).to.deep.equal(['after']);
    expect(b.drvs[1].got).to.deep.equal(['after-h']);
    expect(b.lb.toGuest).to.have.length(0);
    expect(b.lb.toHost).to.have.length(0);
    expect(b.devs.map((d) => d.reopens)).to.deep.equal([1, 1]);
    expect(b.drvs.map((d) => d.reattaches)).to.deep.equal([1, 1]);
  });

  it('a device or driver that cannot reopen is opened or attached instead', async () => {
    const a = await connected();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    const memory = new SharedArrayBuffer(a.lb.memory.byteLength);
    new Uint8Array(memory).set(new Uint8Array(a.lb.memory));
    const b = pair('shm', { memory });
    open.push(b.lb);
    for (const d of [...b.devs, ...b.drvs]) (d as { reopen?: unknown; reattach?: unknown }).reopen = (d as { reattach?: unknown }).reattach = undefined;
    await addDevices(b);
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    expect(b.devs.map((d) => [d.opens, d.reopens])).to.deep.equal([[1, 0], [1, 0]]);
    expect(b.drvs.map((d) => [d.attaches, d.reattaches])).to.deep.equal([[1, 0], [1, 0]]);
  });

  it('restore refuses a state whose device was not added, and keeps nothing', async () => {
    const a = await connected();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    const b = pair('shm');
    open.push(b.lb);
    await b.lb.start();
    await b.lb.server.addDevice(b.devs[0]); // "other" is missing
    let err: unknown = null;
    await b.lb.server.restore(saved.server).catch((e: unknown) => { err = e; });
    expect(err).to.be.instanceOf(VmbusStateError);
    expect((err as Error).message).to.match(/no device was added for channel 2 .*addDevice/);
    expect(b.lb.mapped.size, 'mapped GPADLs released').to.equal(0);
    expect(b.lb.server.connected).to.equal(false);

    const fresh = new VmbusLoopback({ transport: 'shm' });
    open.push(fresh);
    let cerr: unknown = null;
    await fresh.client.restore(saved.client).catch((e: unknown) => { cerr = e; });
    expect((cerr as Error).message).to.match(/no driver is registered for channel 1/);
    expect(fresh.client.attachedChannels()).to.have.length(0);
  });

  it('save refuses while a message is being handled, and restore wants a fresh server', async () => {
    const a = pair('shm');
    open.push(a.lb);
    await addDevices(a);
    const connecting = a.lb.client.connect();
    expect(() => a.lb.client.save()).to.throw(VmbusStateError, /busy/);
    await connecting;
    await until(() => a.drvs.every((d) => d.channel !== null));
    await a.lb.client.whenIdle();
    void a.lb.server.onMessage(4, new Uint8Array(8));
    expect(() => a.lb.server.save()).to.throw(VmbusStateError, /when idle/);
    await a.lb.server.whenIdle();
    const s = a.lb.server.save();
    let err: unknown = null;
    await a.lb.server.restore(s).catch((e: unknown) => { err = e; });
    expect((err as Error).message).to.match(/not fresh/);
  });

  it('a server saved before the guest connected restores and then negotiates as usual', async () => {
    const a = pair('shm');
    open.push(a.lb);
    await addDevices(a);
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    expect(saved.server.negotiatedVersion).to.equal(0);
    const b = pair('shm');
    open.push(b.lb);
    await addDevices(b);
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    await b.lb.client.connect();
    await until(() => b.drvs.every((d) => d.channel !== null));
    expect(b.devs.map((d) => d.opens)).to.deep.equal([1, 1]);
  });

  it('windows mapped ahead of a restore (premap) are the ones it uses, and it maps nothing again', async () => {
    const a = await connected();
    a.lb.holdGuestSignals = true;
    a.hold.host = true;
    a.drvs[0].channel!.send(PacketType.DataInband, 0, 1n, text('unread'));
    await turns();
    const { b, saved } = await moveToNewPair(a);
    await b.lb.server.premap(saved.server);
    expect([...b.lb.mapped.keys()].sort(), 'every saved GPADL mapped ahead').to.deep.equal(saved.server.gpadls.map((g) => g.gpadl).sort());
    // Forget them here: a restore that mapped again would put them back.
    b.lb.mapped.clear();
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    expect(b.lb.mapped.size, 'no GPADL mapped a second time').to.equal(0);
    await until(() => b.devs[0].got.length === 1);
    expect(b.devs[0].got).to.deep.equal(['unread']);
    b.drvs[1].channel!.send(PacketType.DataInband, 0, 2n, text('after'));
    await until(() => b.devs[1].got.length === 1);
    expect(b.devs[1].got).to.deep.equal(['after']);
    let err: unknown = null;
    await b.lb.server.premap(saved.server).catch((e: unknown) => { err = e; });
    expect(err, 'a server that restored is not fresh').to.be.instanceOf(VmbusStateError);
    expect((err as Error).message).to.match(/not fresh/);
  });

  it('a migration maps the running guest\'s GPADLs ahead (gpadlHint); the blackout\'s premap keeps those that match and maps nothing twice', async () => {
    const a = await connected();
    // Taken while the guest runs, as a migration's source does before its first pass.
    const hint = a.lb.server.gpadlHint();
    expect(hint.channels.every((c) => c.queued.length === 0)).to.equal(true);
    const { b, saved } = await moveToNewPair(a);
    expect(hint.gpadls).to.deep.equal(saved.server.gpadls);
    // The hint as if the guest changed its GPADLs afterwards: the first one's pages reordered, and one
    // more GPADL (made and torn down since) is in the hint only.
    const [g0, g1] = hint.gpadls;
    const moved = { ...hint, gpadls: [{ ...g0!, pfns: [...g0!.pfns].reverse() }, g1!, { gpadl: 0x999, relid: g1!.relid, owner: g1!.owner, pfns: [g1!.pfns[0]!] }] };
    expect(decodeVmbusServerState(moved), 'the changed hint is a valid state').to.not.be.a('string');
    await b.lb.server.premap(moved);
    expect([...b.lb.mapped.keys()].sort((x, y) => x - y)).to.deep.equal([g0!.gpadl, g1!.gpadl, 0x999].sort((x, y) => x - y));
    const keptPfns = b.lb.mapped.get(g1!.gpadl);
    // The blackout's state: the same GPADLs as the guest had at the save.
    await b.lb.server.premap(saved.server);
    expect([...b.lb.mapped.keys()].sort((x, y) => x - y), 'the GPADL the state does not name is unmapped').to.deep.equal(saved.server.gpadls.map((g) => g.gpadl).sort((x, y) => x - y));
    expect(b.lb.mapped.get(g0!.gpadl), 'the moved one is mapped again over its saved pages').to.deep.equal(g0!.pfns);
    expect(b.lb.mapped.get(g1!.gpadl), 'the matching one is kept, not mapped again').to.equal(keptPfns);
    b.lb.mapped.clear();
    await b.lb.server.restore(saved.server);
    await b.lb.client.restore(saved.client);
    expect(b.lb.mapped.size, 'the restore maps nothing again').to.equal(0);
    b.drvs[1].channel!.send(PacketType.DataInband, 0, 2n, text('after'));
    await until(() => b.devs[1].got.length === 1);
    expect(b.devs[1].got).to.deep.equal(['after']);
  });

  it('a restore unmaps the windows mapped ahead that its state does not name', async () => {
    const a = pair('shm');
    open.push(a.lb);
    await addDevices(a);
    const before = throughDisk(a.lb.server.save(), a.lb.client.save());
    await a.lb.client.connect();
    await until(() => a.drvs.every((d) => d.channel !== null));
    await a.lb.server.whenIdle();
    const after = throughDisk(a.lb.server.save(), a.lb.client.save());
    expect(after.server.gpadls.length).to.equal(2);
    const b = pair('shm');
    open.push(b.lb);
    await addDevices(b);
    await b.lb.server.premap(after.server);
    expect(b.lb.mapped.size).to.equal(2);
    // Another state comes (here one saved before the guest connected: no GPADLs).
    await b.lb.server.restore(before.server);
    expect(b.lb.mapped.size, 'the windows nobody took are unmapped').to.equal(0);
    await b.lb.client.restore(before.client);
    await b.lb.client.connect();
    await until(() => b.drvs.every((d) => d.channel !== null));
    expect(b.lb.mapped.size, 'the guest made its GPADLs again').to.equal(2);
  });

  it('a restore that fails its checks unmaps what was mapped ahead of it', async () => {
    const a = await connected();
    await a.lb.server.whenIdle();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    const b = pair('shm');
    open.push(b.lb);
    await b.lb.start();
    await b.lb.server.addDevice(b.devs[0]); // "other" is missing: the restore refuses the state
    await b.lb.server.premap(saved.server);
    expect(b.lb.mapped.size).to.equal(2);
    let err: unknown = null;
    await b.lb.server.restore(saved.server).catch((e: unknown) => { err = e; });
    expect((err as Error).message).to.match(/no device was added for channel 2/);
    expect(b.lb.mapped.size, 'nothing stays mapped').to.equal(0);
    // And the server is fresh again: it can be mapped ahead and restored once its devices are there.
    await b.lb.server.addDevice(b.devs[1]);
    await b.lb.server.premap(saved.server);
    await b.lb.server.restore(saved.server);
    expect(b.lb.mapped.size).to.equal(2);
  });

  it('a premap that fails maps nothing', async () => {
    const a = await connected();
    await a.lb.server.whenIdle();
    const saved = throughDisk(a.lb.server.save(), a.lb.client.save());
    // A smaller partition that holds the lower GPADL's pages but not the higher one's: the first
    // maps, the second is refused, and the first must be unmapped again.
    const tops = saved.server.gpadls.map((g) => Math.max(...g.pfns)).sort((x, y) => x - y);
    expect(tops[0]).to.be.lessThan(tops[1]!);
    const small = new VmbusLoopback({ transport: 'shm', memory: new SharedArrayBuffer((tops[0]! + 1) * 4096) });
    open.push(small);
    let err: unknown = null;
    await small.server.premap(saved.server).catch((e: unknown) => { err = e; });
    expect(err).to.be.instanceOf(VmbusStateError);
    expect((err as Error).message).to.match(/outside the partition/);
    expect(small.mapped.size).to.equal(0);
  });
});

describe('VMBus saved-state decoders', () => {
  const channel = {
    relid: 1, interfaceType: ECHO_GUID, interfaceInstance: OTHER_GUID, state: 'open', connectionId: 0x10001, transport: 'shm',
    ringGpadl: 0xe1e10, downstreamRingPageOffset: 5, openId: 1, remoteWindow: 0, opens: 1, faults: 0, lastFault: '',
    packetsIn: 3, packetsOut: 4, queued: [{ type: 6, flags: 0, transId: '18446744073709551615', payload: 'aGk=' }],
  };
  const server = (): Record<string, unknown> => ({
    version: 1, negotiatedVersion: 0x00050003, messageConnectionId: 4, offersRequested: true,
    channels: [structuredClone(channel)],
    gpadls: [{ gpadl: 0xe1e10, relid: 1, owner: 1, pfns: [100, 101, 102, 103, 104, 105, 106, 107, 108, 109] }],
  });
  const client = (): Record<string, unknown> => ({
    version: 1, negotiatedVersion: 0x00050003, messageConnectionId: 4, allOffersDelivered: true, nextGpadl: 0xe1e11, nextOpenId: 2,
    offers: [{ relid: 1, interfaceType: ECHO_GUID, interfaceInstance: OTHER_GUID, flags: 0, connectionId: 0x10001 }],
    channels: [{ relid: 1, interfaceType: ECHO_GUID, transport: 'shm', open: true, gpadl: 0xe1e10, pfn: 100, pages: 10, openId: 1, remoteWindow: 0, packetsIn: 0, packetsOut: 0, queued: [] }],
  });

  it('accepts a valid state and returns an equal copy', () => {
    const s = server();
    const d = decodeVmbusServerState(s);
    expect(d).to.deep.equal(s);
    expect(d).not.to.equal(s);
    expect(decodeVmbusClientState(client())).to.deep.equal(client());
  });

  it('a state the decoder returned is taken as it is (checked once); anything else is decoded, and refused when it is wrong', () => {
    const d = decodeVmbusServerState(server());
    expect(checkedServerState(d), 'the decoder\'s own copy').to.equal(d);
    const raw = server();
    const again = checkedServerState(raw);
    expect(again, 'a state from elsewhere: decoded into a fresh copy').to.deep.equal(raw);
    expect(again).not.to.equal(raw);
    // An equal-looking object is not the decoder's: it is checked, and a bad one is refused.
    const bad = { ...(d as VmbusServerState), negotiatedVersion: 7 };
    expect(checkedServerState(bad)).to.match(/negotiatedVersion/);
    const c = decodeVmbusClientState(client());
    expect(checkedClientState(c)).to.equal(c);
    expect(checkedClientState({ ...(c as VmbusClientState), nextOpenId: -1 })).to.match(/nextOpenId/);
    // A refusal is a sentence, never remembered as a state.
    expect(checkedServerState(null)).to.be.a('string');
  });

  it('rejects unknown versions, non-finite numbers, unknown and missing fields and huge lists with a sentence naming the field', () => {
    const cases: Array<[string, (s: Record<string, unknown>) => void, RegExp]> = [
      ['unknown version', (s) => { s.version = 2; }, /version is 2; this build reads version 1/],
      ['NaN', (s) => { (s.channels as Array<Record<string, unknown>>)[0].relid = NaN; }, /channels\[0\]\.relid is NaN/],
      ['Infinity', (s) => { (s.channels as Array<Record<string, unknown>>)[0].packetsIn = Infinity; }, /channels\[0\]\.packetsIn is Infinity/],
      ['extra field', (s) => { s.extra = 1; }, /has field "extra", which is unknown/],
      ['missing field', (s) => { delete s.gpadls; }, /gpadls is missing/],
      ['too many channels', (s) => { s.channels = Array.from({ length: MAX_SAVED_CHANNELS + 1 }, (_, i) => ({ ...channel, relid: i + 1 })); }, /channels is a list of 257, not a list of at most 256/],
      ['huge pfn list', (s) => { (s.gpadls as Array<Record<string, unknown>>)[0].pfns = new Array(9000).fill(1); }, /gpadls\[0\]\.pfns is a list of 9000/],
      ['bad transaction id', (s) => { ((s.channels as Array<Record<string, unknown>>)[0].queued as Array<Record<string, unknown>>)[0].transId = '18446744073709551616'; }, /transId .* not a decimal from 0 to 2\^64-1/],
      ['bad base64', (s) => { ((s.channels as Array<Record<string, unknown>>)[0].queued as Array<Record<string, unknown>>)[0].payload = 'a!=='; }, /payload .* not base64/],
      ['ring GPADL of another channel', (s) => { (s.channels as Array<Record<string, unknown>>)[0].ringGpadl = 5; }, /ringGpadl 0x5 is not a saved GPADL of relid 1/],
      ['ring offset outside the GPADL', (s) => { (s.channels as Array<Record<string, unknown>>)[0].downstreamRingPageOffset = 9; }, /leaves no room for two rings/],
      ['not a map', (s) => { (s.gpadls as unknown[])[0] = [1]; }, /gpadls\[0\] is a list of 1, not a map/],
    ];
    for (const [what, mutate, re] of cases) {
      const s = server();
      mutate(s);
      const d = decodeVmbusServerState(s);
      expect(d, what).to.be.a('string');
      expect(d as string, what).to.match(re);
    }
    const c = client();
    (c.channels as Array<Record<string, unknown>>)[0].relid = 2;
    expect(decodeVmbusClientState(c)).to.match(/channels\[0\]\.relid 2 is not among the saved offers/);
    const c2 = client();
    c2.nextOpenId = -Infinity;
    expect(decodeVmbusClientState(c2)).to.match(/nextOpenId is -Infinity/);
    expect(decodeVmbusClientState({ ...client(), version: '1' })).to.match(/version is "1"/);
  });

  it('never throws on random values or on valid states with a field replaced (fuzz)', () => {
    fc.assert(fc.property(fc.anything(), (v) => {
      expect(decodeVmbusServerState(v)).to.be.a('string');
      expect(decodeVmbusClientState(v)).to.be.a('string');
    }), { numRuns: 500 });
    const paths = (v: unknown, at: string[] = []): string[][] =>
      v !== null && typeof v === 'object' ? Object.entries(v).flatMap(([k, x]) => [[...at, k], ...paths(x, [...at, k])]) : [];
    for (const [make, decode] of [[server, decodeVmbusServerState], [client, decodeVmbusClientState]] as const) {
      const all = paths(make());
      fc.assert(fc.property(fc.nat(all.length - 1), fc.oneof(fc.jsonValue(), fc.anything(), fc.constantFrom(NaN, Infinity, -1, 2 ** 53, 0x100000000)), fc.boolean(), (i, value, remove) => {
        const s = make();
        const path = all[i];
        let o = s as Record<string, unknown>;
        for (const k of path.slice(0, -1)) o = o[k] as Record<string, unknown>;
        if (remove) delete o[path[path.length - 1]];
        else o[path[path.length - 1]] = value;
        const d = decode(s);
        // Whatever is accepted decodes again to itself and survives JSON unchanged.
        if (typeof d !== 'string') {
          expect(decode(d)).to.deep.equal(d);
          expect(JSON.parse(JSON.stringify(d))).to.deep.equal(d);
        }
      }), { numRuns: 1000 });
    }
  });
});
