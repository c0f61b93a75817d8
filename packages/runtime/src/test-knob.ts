/**
 * Test knobs: environment variables named HVLAB_TEST_* that shorten (or, for a few, lengthen) a
 * bound of hvlab for a test that waits it out and asserts nothing of its length, or hold a step
 * for a set time so that a test can act while it lasts (HVLAB_TEST_POSTCOPY_HOLD_MS, whatever the
 * guest's speed; HVLAB_TEST_COMMIT_SILENT_MS), or until what the test does arrives there
 * (HVLAB_TEST_HOLD_PAGES_UNTIL_DROP: until a connection drops; HVLAB_TEST_READY_DELAY_MS: a
 * host's ready line), or make one thing fail (HVLAB_TEST_FAIL_START_HOST: one host's start). Each
 * is read once, by this function (or testKnobName), where the bound it changes is defined, and
 * documented there; a value that is not a whole number within the bound's own range (or not a
 * name) is ignored, so a stray or mistyped one changes nothing.
 */
export function testKnob(name: `HVLAB_TEST_${string}`, min: number, max = Number.MAX_SAFE_INTEGER): number | null {
  const v = Number(process.env[name]);
  return Number.isSafeInteger(v) && v >= min && v <= max ? v : null;
}

/**
 * A test knob that names something (HVLAB_TEST_FAIL_START_HOST: a cluster's host), read as
 * `testKnob` reads a number: a value `re` does not match is ignored.
 */
export function testKnobName(name: `HVLAB_TEST_${string}`, re: RegExp): string | null {
  const v = process.env[name];
  return v !== undefined && re.test(v) ? v : null;
}

/**
 * The signal that ends a test knob's hold at once, in a process whose knob is set: the root's held
 * answers about a committed move (HVLAB_TEST_COMMIT_SILENT_MS) and a source worker's post-copy hold
 * (HVLAB_TEST_POSTCOPY_HOLD_MS). A hold must outlast what a test does during it on a busy machine;
 * a test whose checks are done sends this instead of waiting the rest of it out. A process whose
 * knob is not set installs no handler.
 */
export const TEST_HOLD_END_SIGNAL = 'SIGUSR2';
