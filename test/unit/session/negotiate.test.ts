import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Filter } from '../../../src/filter.js';
import { negotiate } from '../../../src/session/negotiate.js';
import { isMilterError } from '../../../src/errors.js';
import * as P from '../../../src/protocol/constants.js';
import { C, harness, loggedCodes, recordingFilter } from './helpers.js';

const noop = (): undefined => undefined;
const connectEom: Filter = { connect: noop, eom: noop };
const full: Filter = recordingFilter([], {}, []);
const refused = (err: unknown): boolean => isMilterError(err, 'ERR_MILTER_NEGOTIATION');
const NO_ALL_BUT_CONNECT =
  P.SMFIP_NOHELO |
  P.SMFIP_NOMAIL |
  P.SMFIP_NORCPT |
  P.SMFIP_NOHDRS |
  P.SMFIP_NOEOH |
  P.SMFIP_NOBODY |
  P.SMFIP_NODATA |
  P.SMFIP_NOUNKNOWN;

test('negotiate: versions 2-6 and the Postfix/Sendmail offers', () => {
  const rows: Array<{
    name: string;
    filter: Filter;
    offer: [number, number, number];
    reply: [number, number, number];
  }> = [
    {
      name: 'postfix v6, connect+eom',
      filter: connectEom,
      offer: [6, 0x1ff, 0x1fffff],
      reply: [6, 0xff, NO_ALL_BUT_CONNECT],
    },
    { name: 'sendmail 8.18', filter: connectEom, offer: [6, 0x1ff, 0x1fffff], reply: [6, 0xff, 0x37e] },
    { name: 'postfix v2 mask', filter: connectEom, offer: [2, 0x3f, 0x7f], reply: [2, 0x3f, 0x7e] },
    { name: 'postfix v3 mask', filter: connectEom, offer: [3, 0x3f, 0x17f], reply: [3, 0x3f, 0x17e] },
    { name: 'postfix v4 mask', filter: connectEom, offer: [4, 0x3f, 0x37f], reply: [4, 0x3f, 0x37e] },
    { name: 'future version 7', filter: connectEom, offer: [7, 0x1ff, 0x1fffff], reply: [6, 0xff, 0x37e] },
    {
      name: 'full filter v6: only SKIP',
      filter: full,
      offer: [6, 0x1ff, 0x1fffff],
      reply: [6, 0xff, P.SMFIP_SKIP],
    },
    { name: 'full filter v2', filter: full, offer: [2, 0x3f, 0x7f], reply: [2, 0x3f, 0] },
    { name: 'zero offer = 0x0F / 0x3F', filter: full, offer: [6, 0, 0], reply: [6, 0x0f, 0] },
    {
      name: 'no eom: no actions',
      filter: { connect: noop },
      offer: [6, 0x1ff, 0x1fffff],
      reply: [6, 0, 0x37e],
    },
  ];
  for (const row of rows) {
    const [version, actions, protocol] = row.offer;
    const out = negotiate(row.filter, { version, actions, protocol });
    const r = out.response;
    assert.deepEqual([r.version, r.actions, r.protocol], row.reply, row.name);
    assert.equal(r.macroLists, undefined, row.name);
  }
});

test('negotiate: refusals', () => {
  assert.throws(() => negotiate(full, { version: 1, actions: 0x1ff, protocol: 0x1fffff }), refused);
  // Requested action not offered (CHGFROM is v6).
  const chgfrom: Filter = { eom: noop, actions: ['changeFrom'] };
  assert.throws(() => negotiate(chgfrom, { version: 2, actions: 0x3f, protocol: 0x7f }), refused);
  assert.equal(
    negotiate(chgfrom, { version: 6, actions: 0x1ff, protocol: 0x1fffff }).response.actions,
    P.SMFIF_CHGFROM,
  );
  // Explicit protocol bits not offered (SKIP without SMFIP_SKIP) refuse; NR bits are emulated instead.
  assert.throws(
    () =>
      negotiate(full, { version: 6, actions: 0x1ff, protocol: 0x3ff }, undefined, {
        actions: 0,
        protocol: P.SMFIP_SKIP,
      }),
    refused,
  );
  assert.throws(
    () =>
      negotiate(full, { version: 6, actions: 0x3f, protocol: 0x1fffff }, undefined, {
        actions: 0x40,
        protocol: 0,
      }),
    refused,
  );
});

test('negotiate: NR bits, extensions, macro lists, MDS', () => {
  const nr: Filter = { ...full, noReply: ['header', 'connect', 'envrcpt'] };
  const nrBits = P.SMFIP_NR_HDR | P.SMFIP_NR_CONN | P.SMFIP_NR_RCPT;
  const v6 = negotiate(nr, { version: 6, actions: 0x1ff, protocol: 0x1fffff });
  assert.equal(v6.response.protocol, P.SMFIP_SKIP | nrBits);
  assert.equal(v6.noReply, nrBits);
  assert.equal(v6.emulatedNoReply, 0);
  const v2 = negotiate(nr, { version: 2, actions: 0x3f, protocol: 0x7f });
  assert.equal(v2.response.protocol, 0);
  assert.equal(v2.emulatedNoReply, nrBits);

  const ext: Filter = { ...connectEom, headerLeadingSpace: true, rejectedRecipients: true };
  const e6 = negotiate(ext, { version: 6, actions: 0x1ff, protocol: 0x1fffff });
  assert.equal(e6.response.protocol, 0x37e | P.SMFIP_HDR_LEADSPC | P.SMFIP_RCPT_REJ);
  const e2 = negotiate(ext, { version: 6, actions: 0x1ff, protocol: 0x3ff });
  assert.equal(e2.response.protocol, 0x37e);

  const macros: Filter = {
    ...connectEom,
    macros: { connect: ['{client_addr}', '{client_port}'], eoh: ['i'] },
  };
  const m6 = negotiate(macros, { version: 6, actions: 0x1ff, protocol: 0x1fffff });
  assert.deepEqual(m6.response.macroLists, { 0: '{client_addr} {client_port}', 6: 'i' });
  assert.equal(m6.response.actions, 0x1ff);
  const mNoSym = negotiate(macros, { version: 6, actions: 0xff, protocol: 0x1fffff });
  assert.equal(mNoSym.response.actions, 0xff);
  assert.deepEqual(mNoSym.response.macroLists, { 0: '{client_addr} {client_port}', 6: 'i' });

  const mds = (protocol: number, floor?: number): [number, number] => {
    const o = negotiate(connectEom, { version: 6, actions: 0x1ff, protocol }, floor);
    return [o.response.protocol & ~0x37e, o.options.maxDataSize];
  };
  // The limit follows the negotiation: libmilter's 64 KiB - 1 unless the MTA offers an MDS bit.
  assert.deepEqual(mds(0x1fffff), [0, P.MILTER_MDS_64K]);
  assert.deepEqual(mds(0x1fffff | P.SMFIP_MDS_256K), [P.SMFIP_MDS_256K, P.MILTER_MDS_256K]);
  assert.deepEqual(mds(0x1fffff | P.SMFIP_MDS_1M), [P.SMFIP_MDS_1M, P.MILTER_MDS_1M]);
  assert.deepEqual(mds(0x1fffff | P.SMFIP_MDS_256K, P.MILTER_MDS_1M), [P.SMFIP_MDS_256K, P.MILTER_MDS_1M]);
  assert.deepEqual(mds(0x1fffff | 0x40000000 | 0x80000000), [0, P.MILTER_MDS_64K]);
  assert.deepEqual(mds(0x1fffff, 2_000_000), [0, 2_000_000]);
});

test('negotiate: explicit override', () => {
  const o = negotiate(full, { version: 6, actions: 0x1ff, protocol: 0x1fffff }, undefined, {
    actions: P.SMFIF_ADDHDRS,
    protocol: P.SMFIP_NOHELO | P.SMFIP_NR_CONN | P.SMFIP_MDS_1M,
  });
  assert.deepEqual(
    [o.response.actions, o.response.protocol],
    [P.SMFIF_ADDHDRS, P.SMFIP_NOHELO | P.SMFIP_NR_CONN],
  );
  const v2 = negotiate(full, { version: 2, actions: 0x3f, protocol: 0x7f }, undefined, {
    actions: 0,
    protocol: P.SMFIP_NR_CONN | P.SMFIP_NODATA | P.SMFIP_NOUNKNOWN,
  });
  assert.equal(v2.response.protocol, 0);
  assert.equal(v2.emulatedNoReply, P.SMFIP_NR_CONN);
});

test('session negotiation: reply, override, refusal closes without a reply', async () => {
  const ok = harness(connectEom);
  assert.deepEqual(await ok.send(C.optneg()), ['O:6/0xff/0x37e']);
  assert.equal(ok.session.maxDataSize, P.MILTER_MDS_64K, 'no MDS offered: libmilter limit');
  const mds = harness(connectEom);
  assert.equal(mds.session.maxDataSize, P.MILTER_MDS_64K);
  await mds.send(C.optneg(6, 0x1ff, 0x1fffff | P.SMFIP_MDS_256K));
  assert.equal(mds.session.maxDataSize, P.MILTER_MDS_256K);

  const over = harness((calls) =>
    recordingFilter(calls, {
      negotiate: () => ({ actions: 1, protocol: P.SMFIP_NOHELO, macros: { envfrom: ['i'] } }),
    }),
  );
  assert.deepEqual(await over.send(C.optneg()), ['O:6/0x101/0x2']);

  for (const negotiateCb of [
    () => {
      throw new Error('no');
    },
    () => undefined,
    async () => Promise.reject(new Error('no')),
  ]) {
    const h = harness((calls) => recordingFilter(calls, { negotiate: negotiateCb as Filter['negotiate'] }));
    assert.deepEqual(await h.send(C.optneg()), ['end:fatal']);
    assert.deepEqual(h.calls, ['negotiate', 'close']);
    assert.ok(loggedCodes(h.lines).includes('ERR_MILTER_NEGOTIATION'));
    await h.session.terminate('eof');
    assert.deepEqual(h.calls, ['negotiate', 'close']);
  }
  const old = harness((calls) => recordingFilter(calls));
  assert.deepEqual(await old.send(C.optneg(1)), ['end:fatal']);
  assert.deepEqual(old.calls, ['close']);
});
