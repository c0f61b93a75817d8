/**
 * The readers of roots' answers this package added for host-held faults and chaos moves
 * (rootHostFaults, rootClears, moveOutcome, vmReading), fed junk: they are an edge where another
 * process's bytes come in, so none may throw, and each gives only what it can vouch for.
 */
import { expect } from 'chai';
import { FAULT_ID_RE, seededRandom } from '@hvlab/protocol';
import { moveOutcome, rootClears, rootHostFaults, vmReading } from '../src/index.js';

describe("readers of roots' answers (seeded fuzz)", () => {
  it('never throw on any answer, and give only sound values: ids that are fault ids (or null), whole LPs and times, short texts', () => {
    const next = seededRandom(2026);
    const atoms: unknown[] = [null, undefined, 0, -1, 1.5, 2 ** 60, NaN, Infinity, '', 'f1', 'unknown', 'lp-shrink', 'completed', 'x'.repeat(2000), true, {}, [], 'bad id!'];
    const keys = ['host', 'vms', 'faults', 'id', 'kind', 'lps', 'startedAt', 'endsAt', 'hostClear', 'vm', 'status', 'downtime', 'total-time', 'error-desc', 'name', 'memoryBytes', '__proto__', 'constructor'];
    const junk = (d: number): unknown => {
      const r = next();
      if (d > 4 || r < 0.3) return atoms[Math.floor(next() * atoms.length)];
      if (r < 0.55) return Array.from({ length: Math.floor(next() * 5) }, () => junk(d + 1));
      const o: Record<string, unknown> = {};
      for (const k of keys) if (next() < 0.35) o[k] = junk(d + 1);
      return o;
    };
    // Shapes near the real ones, so the readers' inner checks are reached too.
    const near = (): unknown => ({
      host: Array.from({ length: Math.floor(next() * 20) }, () => ({ id: junk(3), kind: next() < 0.7 ? 'lp-shrink' : junk(3), lps: junk(3), startedAt: junk(3), endsAt: junk(3) })),
      vms: Array.from({ length: Math.floor(next() * 4) }, () => ({ vm: junk(3), faults: next() < 0.8 ? [{ id: junk(3) }] : junk(3) })),
      hostClear: junk(3),
    });
    for (let i = 0; i < 3000; i++) {
      const a = i % 2 === 0 ? junk(0) : near();
      const listed = rootHostFaults(a);
      expect(listed.length).to.be.at.most(16);
      for (const f of listed) {
        expect(f.id === null || (typeof f.id === 'string' && FAULT_ID_RE.test(f.id))).to.equal(true);
        expect(Number.isSafeInteger(f.lps) && f.lps >= 1).to.equal(true);
        expect(Number.isSafeInteger(f.startedAt) && Number.isSafeInteger(f.endsAt)).to.equal(true);
      }
      const c = rootClears(a);
      expect(typeof c.hostClear).to.equal('boolean');
      expect(c.vmFaultIds === null || [...c.vmFaultIds].every((x) => typeof x === 'string')).to.equal(true);
      const m = moveOutcome(a);
      expect(typeof m.status === 'string' && m.status.length <= 32).to.equal(true);
      expect(m.downtimeMs === null || Number.isFinite(m.downtimeMs)).to.equal(true);
      expect(m.downtimeMs === null || m.status === 'completed', 'a downtime only for a completed move').to.equal(true);
      expect(m.error === null || m.error.length <= 500).to.equal(true);
      const v = vmReading(a, 'f1');
      expect(v.memoryBytes === null || (Number.isSafeInteger(v.memoryBytes) && v.memoryBytes > 0)).to.equal(true);
    }
  });
});
