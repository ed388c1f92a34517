/** Conversations driven by the real MTA-side client (src/client), shared by the integration tests. */
import assert from 'node:assert/strict';
import type { ClientReply, EomResult } from '../../src/client/types.js';
import type { MilterClient } from '../../src/client/client.js';
import { MODIFY_EXPECTED, REPLACED_BODY, type EomCase } from './filters.js';

/** A step the filter does not decide on: continue, or not replied/sent because of NR/NO bits. */
export function assertPassed(reply: ClientReply, what: string): void {
  assert.ok(['continue', 'noreply', 'skipped'].includes(reply.kind), `${what}: got ${JSON.stringify(reply)}`);
}

/**
 * One message for `everyActionFilter`: CONNECT/HELO when `withConnect`, a rejected recipient (custom
 * reply), two accepted ones, headers, body and EOM; returns the EOM result.
 */
export async function clientMessage(
  client: MilterClient,
  subject: EomCase,
  withConnect: boolean,
): Promise<EomResult> {
  if (withConnect) {
    assertPassed(
      await client.connect({ hostname: 'client.example', family: 'inet', port: 4567, address: '192.0.2.1' }),
      'connect',
    );
    assertPassed(await client.helo('client.example'), 'helo');
  }
  assertPassed(await client.envfrom('<sender@example.org>', ['SIZE=100']), 'envfrom');
  assert.deepEqual(await client.envrcpt('<reject@example.net>'), {
    kind: 'replyCode',
    text: '550 5.7.1 Recipient rejected',
  });
  assertPassed(await client.envrcpt('<user@example.net>'), 'envrcpt');
  assertPassed(await client.envrcpt('<gone@example.net>'), 'envrcpt');
  assertPassed(await client.data(), 'data');
  assertPassed(await client.header('Subject', subject), 'header');
  assertPassed(await client.header('X-Remove', 'yes'), 'header');
  assertPassed(await client.eoh(), 'eoh');
  assertPassed(await client.body(Buffer.from('Hello.\r\n')), 'body');
  return client.eom();
}

/** Check an EOM result against what `everyActionFilter` does for `subject`. */
export function assertEomOutcome(result: EomResult, subject: EomCase): void {
  switch (subject) {
    case 'modify':
      assert.deepEqual(result.reply, { kind: 'continue' });
      assert.deepEqual(result.modifications, [
        ...MODIFY_EXPECTED,
        { kind: 'replaceBody', chunk: Buffer.from(REPLACED_BODY) },
      ]);
      assert.ok(result.progress >= 1, 'progress packet received');
      return;
    case 'reject':
      assert.deepEqual(result.reply, { kind: 'replyCode', text: '554 5.7.1 message rejected' });
      break;
    default:
      assert.deepEqual(result.reply, { kind: subject });
  }
  assert.deepEqual(result.modifications, []);
}
