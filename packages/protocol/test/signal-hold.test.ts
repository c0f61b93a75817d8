/**
 * holdSignals (signal-hold.ts): signals asked for inside a step are sent when the outermost step
 * ends, in order, and only then; a sender that throws does not keep the others from sending, nor
 * does a step that throws; outside a step a sender runs at once.
 */
import { expect } from 'chai';
import { holdSignals, signalsHeld, whenReleased } from '../src/index.js';

describe('holding signals for a step (holdSignals)', () => {
  it('sends at the end of the outermost step, in order; at once outside one', () => {
    const sent: string[] = [];
    whenReleased(() => sent.push('outside'));
    expect(sent).to.deep.equal(['outside']);
    const r = holdSignals(() => {
      whenReleased(() => sent.push('a'));
      holdSignals(() => {
        expect(signalsHeld()).to.equal(true);
        whenReleased(() => sent.push('b'));
      });
      expect(sent, 'an inner step does not release').to.deep.equal(['outside']);
      whenReleased(() => sent.push('c'));
      return 42;
    });
    expect(r).to.equal(42);
    expect(sent).to.deep.equal(['outside', 'a', 'b', 'c']);
    expect(signalsHeld()).to.equal(false);
  });

  it('releases after a step that throws, and past a sender that throws', () => {
    const sent: string[] = [];
    expect(() =>
      holdSignals(() => {
        whenReleased(() => {
          throw new Error('this sender fails');
        });
        whenReleased(() => sent.push('after the failed one'));
        throw new Error('the step fails');
      }),
    ).to.throw('the step fails');
    expect(sent).to.deep.equal(['after the failed one']);
    expect(signalsHeld()).to.equal(false);
  });
});
