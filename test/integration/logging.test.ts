/** Per-connection child loggers, and a library that prints nothing unless given a logger that does. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { MilterClient } from '../../src/client/client.js';
import { createLogger, silentLogger } from '../../src/logging/logger.js';
import { everyActionFilter } from '../helpers/filters.js';
import { memoryLogger } from '../helpers/logs.js';
import { assertEomOutcome, clientMessage } from '../helpers/mta.js';
import { startServer } from '../helpers/server.js';

const run = promisify(execFile);

test('each connection logs through a child logger bound to { conn, peer }', async (t) => {
  const log = memoryLogger('debug');
  const { address } = await startServer(t, { filter: everyActionFilter(), logger: log.logger });
  const ids = new Set<unknown>();
  for (let i = 0; i < 2; i++) {
    const client = await MilterClient.connect(address.spec);
    t.after(() => client.close());
    assertEomOutcome(await clientMessage(client, 'accept', true), 'accept');
    await client.quit();
  }
  const perConnection = log.lines.filter((l) => l.conn !== undefined);
  assert.ok(perConnection.length >= 2, 'connection lines were logged');
  for (const line of perConnection) {
    assert.match(String(line.peer), /^127\.0\.0\.1:\d+$/);
    ids.add(line.conn);
  }
  assert.equal(ids.size, 2, 'one id per connection');
});

test('a server without a logger writes nothing to stdout or stderr', async () => {
  // A child process runs a whole conversation; its output streams must stay empty.
  const here = fileURLToPath(new URL('.', import.meta.url));
  const script = `
    const { createMilterServer } = await import(${JSON.stringify(here + '../../src/server/server.js')});
    const { MilterClient } = await import(${JSON.stringify(here + '../../src/client/client.js')});
    const server = createMilterServer({ filter: { eom: () => 'accept' } });
    const address = await server.listen('inet:0@127.0.0.1');
    const client = await MilterClient.connect(address.spec);
    await client.envfrom('<a@example.org>');
    await client.eom();
    await client.quit();
    await server.close();
  `;
  const { stdout, stderr } = await run(process.execPath, ['--input-type=module', '-e', script]);
  assert.equal(stdout, '');
  assert.equal(stderr, '');
});

test('createLogger honours level and destination; silentLogger is silent', () => {
  const lines: string[] = [];
  const logger = createLogger({ level: 'warn', destination: { write: (s: string) => void lines.push(s) } });
  logger.info('dropped');
  logger.warn({ code: 'ERR_MILTER_TIMEOUT' }, 'kept');
  assert.equal(lines.length, 1);
  assert.equal((JSON.parse(lines[0] as string) as { code: string }).code, 'ERR_MILTER_TIMEOUT');
  assert.equal(silentLogger.isLevelEnabled('fatal'), false);
});
