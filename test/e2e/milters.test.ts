/**
 * The third-party milters of the pipeline tests, each directly behind a private Postfix (no milterd), so that
 * a failure in test/e2e/pipeline*.test.ts can be told apart from one of these milters or of their set-up
 * (test/e2e/harness/milters.ts): OpenDKIM signs and its signature verifies with the local key (and breaks
 * when the Subject changes); spamass-milter with a local spamd rejects GTUBE with 550 and tags clean mail;
 * OpenDMARC adds its Authentication-Results. Every milter runs under strace: none contacts a non-loopback
 * address.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { PostfixMta } from './harness/postfix.js';
import { makeWorkDir } from './harness/proc.js';
import { SmtpSink } from './harness/sink.js';
import { delivered, headerValues, sendMail, testMessage } from './harness/deliver.js';
import {
  GTUBE,
  SPAM_REJECT_REPLY,
  ThirdPartyMilters,
  type RunningMilter,
  type Transport,
} from './harness/milters.js';
import { contactedAddresses, isLoopback } from './harness/strace.js';

let dir = '';
let milters: ThirdPartyMilters | undefined;
const sink = new SmtpSink();

before(async () => {
  dir = await makeWorkDir('milterd-e2e-milters-');
  await sink.start();
  milters = await ThirdPartyMilters.create(path.join(dir, 'milters'), { strace: true });
});

after(async () => {
  await milters?.stop();
  await sink.stop();
  if (process.env.MILTERD_E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
});

function host(): ThirdPartyMilters {
  if (!milters) throw new Error('milters not started');
  return milters;
}

/** A private Postfix with `milter` as its only smtpd_milter, for the duration of `body`. */
async function behindPostfix(label: string, milter: RunningMilter, body: (port: number) => Promise<void>) {
  const mta = await PostfixMta.start({
    dir: path.join(dir, label),
    sinkPort: sink.port,
    milter: milter.endpoint,
  });
  try {
    await body(mta.port);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new Error(
      `${why}\n--- ${milter.name} output ---\n${milter.output()}\n--- maillog ---\n${await mta.log()}`,
      {
        cause: error,
      },
    );
  } finally {
    await mta.stop();
  }
}

describe('third-party milters directly behind Postfix', { concurrency: 1 }, () => {
  for (const transport of ['inet', 'unix'] as Transport[]) {
    test(`OpenDKIM (${transport}) signs once and the signature verifies with the local key, over the Subject`, async () => {
      const dkim = await host().startOpenDkimSigner(transport);
      try {
        await behindPostfix(`postfix-dkim-${transport}`, dkim, async (port) => {
          const id = `dkim-direct-${transport}`;
          const r = await sendMail(port, {
            from: 'alice@example.com',
            rcpts: ['bob@example.net'],
            message: testMessage({
              from: 'alice@example.com',
              to: 'bob@example.net',
              subject: 'signed',
              body: 'hello',
              id,
            }),
          });
          assert.equal(r.eom?.code, 250, r.transcript);
          const msg = await delivered(sink, id);
          const sigs = headerValues(msg, 'DKIM-Signature');
          assert.equal(sigs.length, 1, `one DKIM-Signature expected:\n${msg.raw.toString('latin1')}`);
          assert.match(sigs[0] ?? '', /d=example\.com;/);
          assert.match(sigs[0] ?? '', /s=test;/);
          assert.match(sigs[0] ?? '', /h=[^;]*Subject/i);
          const ok = await host().verifyDkim(msg.raw, `${id}-delivered`);
          assert.equal(ok.pass, true, `${ok.verdict}\n${ok.authResults}`);
          // The verifier really checks the Subject: changed after signing, the signature fails.
          const tampered = Buffer.from(
            msg.raw.toString('latin1').replace('Subject: signed', 'Subject: changed'),
            'latin1',
          );
          const bad = await host().verifyDkim(tampered, `${id}-tampered`);
          assert.equal(bad.pass, false, bad.verdict);
          assert.match(bad.verdict, /failed/);
        });
      } finally {
        await host().stopOne(dkim);
      }
    });
  }

  test('spamass-milter with a local spamd rejects GTUBE with 550 and passes clean mail, tagged', async () => {
    const spam = await host().startSpamassMilter('inet');
    try {
      await behindPostfix('postfix-spamass', spam, async (port) => {
        const gtube = await sendMail(port, {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'gtube',
            body: GTUBE,
            id: 'gtube-direct',
          }),
        });
        assert.equal(gtube.eom?.code, 550, gtube.transcript);
        assert.match(gtube.eom?.text ?? '', SPAM_REJECT_REPLY);
        const id = 'clean-direct';
        const clean = await sendMail(port, {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'clean',
            body: 'just a note',
            id,
          }),
        });
        assert.equal(clean.eom?.code, 250, clean.transcript);
        const msg = await delivered(sink, id);
        assert.match(headerValues(msg, 'X-Spam-Status')[0] ?? '', /^No, /);
        assert.equal(
          sink.messages.some((m) => m.raw.includes(GTUBE)),
          false,
          'the GTUBE message was delivered',
        );
      });
    } finally {
      await host().stopOne(spam);
    }
  });

  test('OpenDMARC adds its Authentication-Results', async () => {
    const dmarc = await host().startOpenDmarc('inet');
    try {
      await behindPostfix('postfix-dmarc', dmarc, async (port) => {
        const id = 'dmarc-direct';
        const r = await sendMail(port, {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'dmarc',
            body: 'hello',
            id,
          }),
        });
        assert.equal(r.eom?.code, 250, r.transcript);
        const msg = await delivered(sink, id);
        const ar = headerValues(msg, 'Authentication-Results');
        assert.equal(ar.length, 1, msg.raw.toString('latin1'));
        assert.match(ar[0] ?? '', /^mta\.test; dmarc=\w+ .*header\.from=example\.com/);
      });
    } finally {
      await host().stopOne(dmarc);
    }
  });

  test('no milter contacted a non-loopback address (strace)', async () => {
    const files = host().straceFiles();
    assert.ok(files.length >= 4, `strace files: ${files.join(', ')}`);
    const contacts = await contactedAddresses(files);
    assert.ok(
      contacts.some((c) => c.address === '127.0.0.1'),
      'the trace saw no loopback connect at all',
    );
    const outside = contacts.filter((c) => !isLoopback(c.address));
    assert.deepEqual(
      outside.map((c) => `${c.address}: ${c.line}`),
      [],
    );
  });
});
