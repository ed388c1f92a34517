/** Errors from libuv calls made past net's wrappers look like Node's own, so logs and handlers read them alike. */
import assert from 'node:assert/strict';
import os from 'node:os';
import { test } from 'node:test';
import { errnoError } from '../../../src/server/errno.js';

test('a negative errno becomes an Error with code, errno and syscall, named like net names its own', () => {
  const err = errnoError(-os.constants.errno.EMFILE, 'accept');
  assert.ok(err instanceof Error);
  assert.equal(err.message, 'accept EMFILE');
  assert.equal(err.code, 'EMFILE');
  assert.equal(err.errno, -os.constants.errno.EMFILE);
  assert.equal(err.syscall, 'accept');
});

test('a status that is not an errno still gives an Error (code UNKNOWN), never a throw', () => {
  const err = errnoError(0, 'write');
  assert.equal(err.message, 'write UNKNOWN');
  assert.equal(err.code, 'UNKNOWN');
});
