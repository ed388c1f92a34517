/**
 * Full transactions through the real MTA-side client over TCP/IPv4, TCP/IPv6 and a Unix socket: every
 * EOM decision, and every modification action arrives intact.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/client.js';
import { EOM_CASES, everyActionFilter, newRecord } from '../helpers/filters.js';
import { assertEomOutcome, clientMessage } from '../helpers/mta.js';
import { startServer } from '../helpers/server.js';
import { tempDir, waitFor } from '../helpers/wait.js';

const TRANSPORTS = [
  { name: 'TCP over IPv4', spec: async () => 'inet:0@127.0.0.1' },
  { name: 'TCP over IPv6', spec: async () => 'inet6:0@[::1]' },
  { name: 'a Unix socket', spec: async (dir: string) => `unix:${join(dir, 'milter.sock')}` },
];

for (const transport of TRANSPORTS) {
  test(`every EOM action over ${transport.name}`, async (t) => {
    const record = newRecord();
    const dir = await tempDir(t);
    const { server, address } = await startServer(
      t,
      { filter: everyActionFilter(record) },
      await transport.spec(dir),
    );
    if (address.kind === 'inet') assert.notEqual(address.port, 0, 'the real port is reported');
    assert.deepEqual(server.addresses, [address]);

    const client = await MilterClient.connect(address.spec);
    t.after(() => client.close());
    let first = true;
    for (const subject of EOM_CASES) {
      assertEomOutcome(await clientMessage(client, subject, first), subject);
      first = false;
    }
    await client.quit();
    await waitFor(() => record.closes.size === 1, 'close callback');
    assert.deepEqual([...record.closes.values()], [1]);
    assert.equal(record.eoms, EOM_CASES.length);
  });
}

test('several listeners on one server', async (t) => {
  const record = newRecord();
  const dir = await tempDir(t);
  const { server } = await startServer(t, { filter: everyActionFilter(record) });
  await server.listen('inet6:0@::1');
  await server.listen(`local:${join(dir, 'second.sock')}`);
  assert.equal(server.addresses.length, 3);
  for (const address of server.addresses) {
    const client = await MilterClient.connect(address.spec);
    t.after(() => client.close());
    assertEomOutcome(await clientMessage(client, 'modify', true), 'modify');
    await client.quit();
  }
  await waitFor(() => record.closes.size === 3, 'three close callbacks');
});
