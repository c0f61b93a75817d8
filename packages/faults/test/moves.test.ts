/**
 * The chaos run's moves against fake hosts (no processes): a move past its timeout is watched to
 * its end, its record says what became of it, and the VM's host (where its next move starts, its
 * readings are asked and the placement check looks) follows what happened.
 */
import { expect } from 'chai';
import { MgmtCallError, type MgmtClient } from '@hvlab/host';
import { ChaosMoves, chaosMoveRows, type MoveRecord, type ScheduledMove } from '../src/index.js';

type Handler = (op: string, args: Record<string, unknown>) => unknown;

/** Hosts whose answers `handlers` give (a Promise may be returned: the answer comes when it settles); every request is logged. */
function fakeHosts(handlers: Record<string, Handler>) {
  const asked: Array<{ host: string; op: string; args: Record<string, unknown> }> = [];
  const clients = new Map<string, Pick<MgmtClient, 'request'>>();
  for (const [host, h] of Object.entries(handlers)) {
    clients.set(host, {
      async request<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
        asked.push({ host, op, args });
        return (await h(op, args)) as T;
      },
    } as unknown as Pick<MgmtClient, 'request'>);
  }
  return { clients, asked };
}

const move = (id: string, vm: string, to: string, atMs = 0): ScheduledMove => ({ id, vm, to, atMs, method: 'precopy', options: {}, source: 'explicit' });
const never = new Promise<never>(() => {});
const tooLate = (): never => {
  throw new MgmtCallError('MigrationCancelTooLate', 'the move is past its switch-over');
};

/** Resolves once `cond` holds (asked every 5 ms): the tests wait for what happened, not for a time. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

/** A promise and its resolve, for a fake host's answer the test lets go. */
function gate<T>(): { promise: Promise<T>; open: (v: T) => void } {
  let open!: (v: T) => void;
  const promise = new Promise<T>((r) => (open = r));
  return { promise, open };
}

function mover(clients: Map<string, Pick<MgmtClient, 'request'>>, said: string[], extra: { settleMs?: number; timeoutMs?: number; abortGraceMs?: number } = {}) {
  const location = new Map([['a', 'h1']]);
  const records: MoveRecord[] = [];
  const stop = new AbortController();
  const gone = new AbortController();
  const m = new ChaosMoves({
    clients, location, records, t0: Date.now(), endAt: Date.now() + 60_000, signal: stop.signal, clusterGone: gone.signal,
    say: (l) => said.push(l), timeoutMs: extra.timeoutMs ?? 50, settleMs: extra.settleMs ?? 5000, pollMs: 10, ...(extra.abortGraceMs !== undefined ? { abortGraceMs: extra.abortGraceMs } : {}),
  });
  return { m, location, records, stop };
}

describe('chaos moves against fake hosts', () => {
  it('a move that completes after its timeout moves the VM: its record says so, and the VM\'s next move starts from where it went', async () => {
    // h1's status says completed only once the test has seen m1 watched and m2 waiting for it
    // (no time assumed: the move before was answered after its 4th status ask, ~70 ms, and the
    // test looked at 70 ms).
    let release = false;
    const done = { status: 'completed', downtime: 40, 'total-time': 400, from: 'h1', to: 'h2' };
    const { clients, asked } = fakeHosts({
      // h1 does not answer the move in time, refuses the cancel (past its switch-over), then completes it.
      h1: (op) => {
        if (op === 'vmMove') return never;
        if (op === 'vmMoveCancel') tooLate();
        if (op === 'vmMoveStatus') return release ? done : { ...done, status: 'active', downtime: 0 };
        if (op === 'vmList') return [];
        throw new Error(`unexpected ${op} on h1`);
      },
      h2: (op, args) => {
        if (op === 'vmMove') return { status: 'completed', downtime: 30, 'total-time': 300, to: args.to };
        if (op === 'vmList') return [{ name: 'a', state: 'Running' }];
        throw new Error(`unexpected ${op} on h2`);
      },
    });
    const said: string[] = [];
    const { m, location, records } = mover(clients, said, { settleMs: 600_000 });
    const first = m.start(move('m1', 'a', 'h2'));
    // m2 comes while m1 is past its timeout and still watched: it waits, then starts from h2.
    await until(() => said.some((l) => l.startsWith('m1: a h1 → h2 timeout')));
    expect(m.unended().map((x) => x.id), 'm1 is watched past its timeout').to.deep.equal(['m1']);
    const second = m.start(move('m2', 'a', 'h1', 70));
    expect(said.some((l) => /^m2 at \+\d+\.\ds: a is still moving \(m1\); m2 waits for it$/.test(l)), said.join('\n')).to.equal(true);
    release = true;
    await Promise.all([first, second]);
    const [m1, m2] = records;
    expect(m1).to.include({ status: 'completed', downtimeMs: 40, totalMs: 400, error: null, from: 'h1', to: 'h2' });
    expect(m1!.note).to.match(/^not over after 0\.05 s; its cancel was refused: the move is past its switch-over; it completed after all, \d+\.\d s later$/);
    expect(m1!.timedOutAt).to.be.a('number');
    expect(m1!.endedAt).to.be.at.least(m1!.timedOutAt!);
    // m2 was asked of h2, where m1 left the VM (it was asked of h1, which had it no more).
    expect(asked.filter((x) => x.op === 'vmMove').map((x) => `${x.host}→${String(x.args.to)}`)).to.deep.equal(['h1→h2', 'h2→h1']);
    expect(m2).to.include({ status: 'completed', from: 'h2', to: 'h1' });
    expect(location.get('a')).to.equal('h1');
    expect(said).to.include('m1: a h1 → h2 timeout (not over after 0.05 s; its cancel was refused: the move is past its switch-over); watching it to its end');
    expect(said.some((l) => /^m2 at \+\d+\.\ds \(after m1\): moving a h2 → h1 \(precopy\)$/.test(l)), said.join('\n')).to.equal(true);
    // The report's table says it completed, with the note.
    expect(chaosMoveRows({ moves: records, t0: 0 })[1]![6]).to.match(/^completed: not over after 0\.05 s; its cancel was refused/);
  });

  it('a move cancelled after its timeout leaves the VM where it was, and its record says it was cancelled', async () => {
    let statusAsks = 0;
    const { clients } = fakeHosts({
      h1: (op) => {
        if (op === 'vmMove') return never;
        if (op === 'vmMoveCancel') return { status: 'active' };
        if (op === 'vmMoveStatus') return ++statusAsks < 3 ? { status: 'active' } : { status: 'cancelled', 'total-time': 90, downtime: 0, 'error-desc': 'cancelled by the user' };
        throw new Error(`unexpected ${op} on h1`);
      },
      h2: (op) => {
        throw new Error(`unexpected ${op} on h2`);
      },
    });
    const { m, location, records } = mover(clients, []);
    await m.start(move('m1', 'a', 'h2'));
    expect(records[0]).to.include({ status: 'cancelled', downtimeMs: null, totalMs: 90 });
    expect(records[0]!.error).to.match(/^not over after 0\.05 s; its cancel was asked; it ended cancelled \d+\.\d s later: cancelled by the user$/);
    expect(location.get('a')).to.equal('h1');
  });

  it('a move still not over when the watch gives up: the VM is taken to be on the one host that lists it, and the record stays timeout', async () => {
    const { clients } = fakeHosts({
      h1: (op) => {
        if (op === 'vmMove') return never;
        if (op === 'vmMoveCancel') tooLate();
        if (op === 'vmMoveStatus') return { status: 'postcopy-active' };
        if (op === 'vmList') return [];
        throw new Error(`unexpected ${op} on h1`);
      },
      h2: (op) => {
        if (op === 'vmList') return [{ name: 'a', state: 'Running' }];
        throw new Error(`unexpected ${op} on h2`);
      },
    });
    const { m, location, records } = mover(clients, [], { settleMs: 100 });
    await m.start(move('m1', 'a', 'h2'));
    expect(records[0]).to.include({ status: 'timeout' });
    expect(records[0]!.error).to.match(/^not over after 0\.05 s; its cancel was refused: the move is past its switch-over; still not over \d+\.\d s later, when a was listed on h2 \(the run takes it to be there\)$/);
    expect(location.get('a')).to.equal('h2');
  });

  it('a Ctrl-C while a move past its timeout is watched ends the watch at once: its hosts are not asked where the VM is, and the record says it is taken to be where the move began', async () => {
    const { clients, asked } = fakeHosts({
      // Nothing but the cancel is answered: a listing would wait forever (its 10 s on real hosts).
      h1: (op) => {
        if (op === 'vmMoveCancel') tooLate();
        if (op === 'vmMoveStatus') return { status: 'postcopy-active' };
        return never;
      },
      h2: () => never,
    });
    const said: string[] = [];
    const { m, location, records, stop } = mover(clients, said, { settleMs: 600_000 });
    const done = m.start(move('m1', 'a', 'h2'));
    await until(() => said.some((l) => l.startsWith('m1: a h1 → h2 timeout')));
    stop.abort();
    await done;
    expect(records[0]).to.include({ status: 'timeout' });
    expect(records[0]!.error).to.match(/^not over after 0\.05 s; its cancel was refused: the move is past its switch-over; the run was interrupted \d+\.\d s later, while the move was not over: a is taken to be on h1, where the move began \(its hosts were not asked\)$/);
    expect(records[0]!.endedAt).to.be.a('number');
    expect(location.get('a')).to.equal('h1');
    // On the code before, the run then asked h1 and h2 for their VMs, in turn (and waited on each).
    expect(asked.filter((x) => x.op === 'vmList')).to.deep.equal([]);
  });

  it('a Ctrl-C before a move\'s timeout: its cancel is asked, and a move not over a grace period later is taken to be where it began and marked not over (it waited the whole timeout)', async () => {
    const { clients, asked } = fakeHosts({ h1: () => never, h2: () => never });
    const said: string[] = [];
    const { m, location, records, stop } = mover(clients, said, { timeoutMs: 600_000, abortGraceMs: 20 });
    const done = m.start(move('m1', 'a', 'h2'));
    await until(() => asked.some((x) => x.op === 'vmMove'));
    stop.abort();
    await done;
    expect(asked.map((x) => x.op)).to.include('vmMoveCancel');
    expect(records[0]).to.include({ status: 'timeout' });
    expect(records[0]!.error).to.equal('the run was interrupted during the move, which was not over 0.02 s after its cancel was asked: a is taken to be on h1, where the move began (its hosts were not asked)');
    expect(location.get('a')).to.equal('h1');
  });

  it('a move whose request throws at once (a client that throws, or none for its host) is recorded as refused, and the VM\'s next move still starts', async () => {
    const clients = new Map<string, Pick<MgmtClient, 'request'>>([
      ['h1', { request: () => {
        throw new Error('the connection to h1 is closed');
      } } as unknown as Pick<MgmtClient, 'request'>],
    ]);
    const { m, location, records } = mover(clients, []);
    // On the code before, the throw rejected the move's promise and no record said refused.
    await m.start(move('m1', 'a', 'h2'));
    expect(records[0]).to.include({ status: 'refused', error: 'the connection to h1 is closed', from: 'h1', to: 'h2' });
    expect(records[0]!.endedAt).to.be.a('number');
    location.set('a', 'h3');
    await m.start(move('m2', 'a', 'h1'));
    expect(records[1]).to.include({ status: 'refused', error: 'no management client for host h3', from: 'h3' });
    expect(location.get('a')).to.equal('h3');
  });

  it('three moves of one VM run in order: the third, asked while the second still waited for the first, waits for the second and starts from where it left the VM', async () => {
    const first = gate<void>();
    const second = gate<void>();
    const completed = (to: unknown) => ({ status: 'completed', downtime: 10, 'total-time': 100, to });
    const { clients, asked } = fakeHosts({
      h1: (op, args) => {
        if (op === 'vmMove') return first.promise.then(() => completed(args.to));
        throw new Error(`unexpected ${op} on h1`);
      },
      h2: (op, args) => {
        if (op === 'vmMove') return second.promise.then(() => completed(args.to));
        throw new Error(`unexpected ${op} on h2`);
      },
      h3: (op, args) => {
        if (op === 'vmMove') return completed(args.to);
        throw new Error(`unexpected ${op} on h3`);
      },
    });
    const said: string[] = [];
    const { m, location, records } = mover(clients, said, { timeoutMs: 600_000 });
    const moves = () => asked.filter((x) => x.op === 'vmMove').map((x) => `${x.host}→${String(x.args.to)}`);
    const all = [m.start(move('m1', 'a', 'h2')), m.start(move('m2', 'a', 'h3')), m.start(move('m3', 'a', 'h1'))];
    await new Promise((r) => setTimeout(r, 20));
    // On the code before, m3 found no record of m2 (not started) and was asked of h1 at once: ['h1→h2', 'h1→h1'].
    expect(moves(), 'only m1 asked while it runs').to.deep.equal(['h1→h2']);
    expect(records.map((r) => r.id)).to.deep.equal(['m1']);
    first.open();
    await until(() => moves().length === 2);
    expect(moves(), 'm2 from h2 once m1 completed; m3 still waits').to.deep.equal(['h1→h2', 'h2→h3']);
    expect(records.map((r) => r.id)).to.deep.equal(['m1', 'm2']);
    second.open();
    await Promise.all(all);
    expect(moves()).to.deep.equal(['h1→h2', 'h2→h3', 'h3→h1']);
    const [, m2, m3] = records;
    expect(m3).to.include({ status: 'completed', from: 'h3', to: 'h1' });
    expect(m3!.startedAt, 'm3 started after m2 ended').to.be.at.least(m2!.endedAt!);
    expect(location.get('a')).to.equal('h1');
    expect(said.filter((l) => / waits for it$/.test(l)).map((l) => l.replace(/ at \+\d+\.\ds/, ''))).to.deep.equal([
      'm2: a is still moving (m1); m2 waits for it',
      'm3: a is still moving (m2); m3 waits for it',
    ]);
    expect(said.some((l) => /^m3 at \+\d+\.\ds \(after m2\): moving a h3 → h1 \(precopy\)$/.test(l)), said.join('\n')).to.equal(true);
  });
});
