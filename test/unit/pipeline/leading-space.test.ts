/**
 * Header values and SMFIP_HDR_LEADSPC across members: when one member asks for the leading space (OpenDKIM
 * does), the pipeline negotiates it with the MTA and must then send every value with its space, also the
 * values of members that did not ask for it; a member that asked sees earlier members' values with it.
 * Found behind Postfix (test/e2e/pipeline.test.ts): `Subject:[tagged] …` arrived without the space, because
 * the staged change computed its value after the member's `eom` had returned.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Filter } from '../../../src/filter.js';
import { messageFilter } from '../../../src/message/index.js';
import { pipeline } from '../../../src/pipeline/index.js';
import { SMFIP_HDR_LEADSPC } from '../../../src/protocol/constants.js';
import { testFilter } from '../../../src/testing/index.js';

test('a member without HDR_LEADSPC gets the space added when another member negotiated it', async () => {
  const tagger = messageFilter({
    message(trx) {
      trx.headers.set('Subject', `[tagged] ${trx.headers.get('Subject') ?? ''}`);
      trx.headers.add('X-Tagger', 'yes');
    },
  });
  const seen: Array<[string, string]> = [];
  const spaced: Filter = {
    headerLeadingSpace: true,
    actions: ['addHeader', 'changeHeader'],
    header: (_ctx, name, value) => void seen.push([name, value]),
    eom: (ctx) => {
      ctx.insertHeader(0, 'X-Top', ' own space');
      ctx.changeHeader('X-Tagger', 1, ' changed');
    },
  };
  const plain: Filter = {
    actions: ['addHeader'],
    eom: (ctx) => void ctx.addHeader('X-Plain', 'no space given'),
  };
  const t = await testFilter(
    pipeline([
      { name: 'tagger', filter: tagger },
      { name: 'spaced', filter: spaced },
      { name: 'plain', filter: plain },
    ]),
    {
      messages: [
        {
          sender: '<alice@example.org>',
          recipients: ['<bob@example.net>'],
          headers: [['Subject', ' hello']],
          body: 'Hi.\r\n',
        },
      ],
    },
  );
  assert.equal((t.negotiated?.protocol ?? 0) & SMFIP_HDR_LEADSPC, SMFIP_HDR_LEADSPC);
  assert.deepEqual(seen, [
    ['Subject', ' [tagged] hello'],
    ['X-Tagger', ' yes'],
  ]);
  const mods = t.messages[0]?.eom?.modifications ?? [];
  const values = Object.fromEntries(
    mods.flatMap((m) => ('name' in m && 'value' in m ? [[m.name, m.value]] : [])),
  );
  assert.deepEqual(values, {
    Subject: ' [tagged] hello',
    'X-Tagger': ' changed',
    'X-Top': ' own space',
    'X-Plain': ' no space given',
  });
});
