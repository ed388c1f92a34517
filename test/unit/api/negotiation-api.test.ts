/** Negotiation in the public API: the computed default is exported, and the result is readable by name. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultNegotiation, type Filter } from '../../../src/index.js';
import * as protocol from '../../../src/protocol/index.js';
import { testFilter } from '../../../src/testing/index.js';

test('a negotiate override starts from defaultNegotiation and changes one flag; ctx.negotiated names the actions', async () => {
  const names: string[][] = [];
  const filter: Filter = {
    actions: ['addHeader', 'changeHeader'],
    macros: { envfrom: ['{auth_authen}'] },
    negotiate(_ctx, offer) {
      const d = defaultNegotiation(filter, offer);
      return { ...d, protocol: d.protocol | (offer.protocol & protocol.SMFIP_NR_HDR) };
    },
    header() {},
    eom(ctx) {
      names.push([...(ctx.negotiated?.actionNames ?? [])]);
    },
  };
  const t = await testFilter(filter, {
    messages: [{ sender: '<a@x>', recipients: ['<b@x>'], headers: [['Subject', 'x']], body: 'b\r\n' }],
  });
  const reply = t.negotiated;
  assert.ok(reply);
  // The default (headers and eom defined; connect… absent → NO bits) plus the one flag added.
  assert.equal(reply.protocol & protocol.SMFIP_NR_HDR, protocol.SMFIP_NR_HDR);
  assert.equal(reply.protocol & protocol.SMFIP_NOCONNECT, protocol.SMFIP_NOCONNECT);
  assert.deepEqual(names, [['addHeader', 'changeHeader', 'setSymbolList']]);
  // NR_HDR: the header got no reply.
  assert.deepEqual(t.messages[0]?.headers, [{ kind: 'noreply' }]);
});
