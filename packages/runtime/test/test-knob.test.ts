import { expect } from 'chai';
import { testKnob } from '../src/test-knob.js';

describe('test knobs (HVLAB_TEST_*)', () => {
  const name = 'HVLAB_TEST_KNOB_OF_THIS_TEST';
  afterEach(() => {
    delete process.env[name];
  });

  it('are a whole number within their range, and nothing otherwise: unset, empty, out of range, fractional or not a number', () => {
    expect(testKnob(name, 100, 8000)).to.equal(null);
    for (const [value, read] of [['1000', 1000], ['100', 100], ['8000', 8000], ['99', null], ['8001', null], ['', null], ['1.5e3', 1500], ['1500.5', null], ['-1', null], ['soon', null], ['Infinity', null]] as const) {
      process.env[name] = value;
      expect(testKnob(name, 100, 8000), JSON.stringify(value)).to.equal(read);
    }
    process.env[name] = String(2 ** 60);
    expect(testKnob(name, 1), 'no upper bound but a safe integer').to.equal(null);
  });
});
