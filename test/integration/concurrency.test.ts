/**
 * 200 concurrent sessions, each playing several messages that cover every EOM decision and action:
 * every reply is validated and every connection gets exactly one close callback.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/client.js';
import { EOM_CASES, everyActionFilter, newRecord } from '../helpers/filters.js';
import { assertEomOutcome, clientMessage } from '../helpers/mta.js';
import { startServer } from '../helpers/server.js';
import { waitFor } from '../helpers/wait.js';

const SESSIONS = 200;

test(`${SESSIONS} concurrent sessions with every EOM action`, async (t) => {
  const record = newRecord();
  const counts = { opened: 0, closed: 0, commands: 0, written: 0, errors: 0 };
  const { server, address } = await startServer(t, {
    filter: everyActionFilter(record),
    observer: {
      connectionOpened: () => counts.opened++,
      connectionClosed: () => counts.closed++,
      command: () => counts.commands++,
      bytesWritten: (n) => (counts.written += n),
      error: () => counts.errors++,
    },
  });

  await Promise.all(
    Array.from({ length: SESSIONS }, async (_, i) => {
      const client = await MilterClient.connect(address.spec);
      t.after(() => client.close());
      // Rotate the case order per session so that different decisions run side by side.
      const cases = EOM_CASES.map(
        (_c, k) => EOM_CASES[(i + k) % EOM_CASES.length] as (typeof EOM_CASES)[number],
      );
      let first = true;
      for (const subject of cases) {
        assertEomOutcome(await clientMessage(client, subject, first), subject);
        first = false;
      }
      await client.quit();
    }),
  );

  await waitFor(() => server.connectionCount === 0, 'every connection to be released');
  assert.equal(record.closes.size, SESSIONS);
  assert.ok(
    [...record.closes.values()].every((n) => n === 1),
    'close called exactly once per connection',
  );
  assert.equal(record.eoms, SESSIONS * EOM_CASES.length);
  assert.equal(counts.opened, SESSIONS);
  assert.equal(counts.closed, SESSIONS);
  assert.equal(counts.errors, 0);
  // Per message at least 3 RCPT, 2 HEADER, BODY and EOM reach the filter (it has no helo/envfrom/data/eoh
  // callbacks, so those are negotiated away); per connection OPTNEG, CONNECT and QUIT.
  assert.ok(counts.commands >= SESSIONS * (EOM_CASES.length * 7 + 3), 'every command was observed');
  assert.ok(counts.written > 0);
});
