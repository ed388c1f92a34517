/**
 * Issue 14's acceptance behind real MTAs: one `milterd serve` runs the pipeline
 *   1. the filter module test/e2e/fixtures/subject-tagger.ts (messageFilter: rewrites the Subject, adds a header),
 *   2. spamass-milter with a local spamd (upstream milter),
 *   3. OpenDKIM signing `example.com` (upstream milter, last: it signs what is delivered),
 * behind Postfix over TCP, Postfix over a Unix socket and Sendmail over TCP. Each delivered message carries
 * the rewritten Subject, the tagger's header, SpamAssassin's X-Spam-Status and exactly one DKIM-Signature
 * that OpenDKIM verifies with the local key; GTUBE is refused with SpamAssassin's 550 and never delivered.
 * The milters alone are checked in milters.test.ts (same harness, no milterd).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { PostfixMta } from './harness/postfix.js';
import { SendmailMta } from './harness/sendmail.js';
import { makeWorkDir } from './harness/proc.js';
import { SmtpSink } from './harness/sink.js';
import type { Mta } from './harness/mta.js';
import { delivered, findDelivered, headerValues, sendMail, testMessage } from './harness/deliver.js';
import { GTUBE, SPAM_REJECT_REPLY, ThirdPartyMilters } from './harness/milters.js';
import { BUILT_FIXTURES, MilterdDaemon, yamlMembers } from './harness/milterd-daemon.js';

let dir = '';
let milters: ThirdPartyMilters | undefined;
let milterd: MilterdDaemon | undefined;
let unixSocket = '';
const sink = new SmtpSink();

before(async () => {
  dir = await makeWorkDir('milterd-e2e-pipeline-');
  await sink.start();
  milters = await ThirdPartyMilters.create(path.join(dir, 'milters'));
  const spam = await milters.startSpamassMilter('inet');
  const dkim = await milters.startOpenDkimSigner('inet');
  unixSocket = path.join(dir, 'milterd.sock');
  milterd = await MilterdDaemon.start({
    dir,
    unixSocket,
    filters: yamlMembers([
      {
        name: 'tagger',
        module: path.join(BUILT_FIXTURES, 'subject-tagger.js'),
        options: { tag: '[tagged]' },
      },
      { name: 'spamassassin', upstream: spam.address },
      { name: 'dkim', upstream: dkim.address },
    ]),
  });
});

after(async () => {
  await milterd?.stop();
  await milters?.stop();
  await sink.stop();
  if (process.env.MILTERD_E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
});

function host(): ThirdPartyMilters {
  if (!milters) throw new Error('milters not started');
  return milters;
}

const MTAS = [
  { label: 'Postfix, TCP', kind: 'postfix', transport: 'inet' },
  { label: 'Postfix, Unix socket', kind: 'postfix', transport: 'unix' },
  { label: 'Sendmail, TCP', kind: 'sendmail', transport: 'inet' },
] as const;

for (const m of MTAS) {
  describe(
    `pipeline [subject-tagger module, spamass-milter, OpenDKIM] behind ${m.label}`,
    { concurrency: 1 },
    () => {
      let mta: Mta | undefined;
      const key = `${m.kind}-${m.transport}`;
      before(async () => {
        if (!milterd) throw new Error('milterd not started');
        const options = {
          dir: path.join(dir, key),
          sinkPort: sink.port,
          milter:
            m.transport === 'inet'
              ? ({ kind: 'inet', port: milterd.port } as const)
              : ({ kind: 'unix', path: unixSocket } as const),
        };
        mta = m.kind === 'postfix' ? await PostfixMta.start(options) : await SendmailMta.start(options);
      });
      after(async () => {
        await mta?.stop();
      });

      const port = (): number => {
        if (!mta) throw new Error(`${m.kind} not started`);
        return mta.port;
      };
      const explain = async (what: string): Promise<string> =>
        `${what}\n--- milterd log ---\n${milterd?.logText().slice(-8000) ?? ''}\n--- MTA log ---\n${(await mta?.log())?.slice(-6000) ?? ''}`;

      test('the message is tagged, scanned and signed once; the signature verifies over the rewritten Subject', async () => {
        const id = `pipeline-signed-${key}`;
        const r = await sendMail(port(), {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'quarterly report',
            body: 'See you.',
            id,
          }),
        });
        assert.equal(r.eom?.code, 250, await explain(r.transcript));
        const msg = await delivered(sink, id);
        const raw = msg.raw.toString('latin1');
        // As the MTA writes headers itself: one space after the colon, also for the module's headers.
        assert.match(raw, /\r\nSubject: \[tagged\] quarterly report\r\n/);
        assert.deepEqual(headerValues(msg, 'Subject'), ['[tagged] quarterly report'], raw);
        assert.match(raw, /\r\nX-Pipeline-Tagger: subject-tagger\r\n/);
        // spamass-milter saw the message (it comes after the tagger, before the signer).
        assert.match(raw, /\r\nX-Spam-Status: No, /);
        const sigs = headerValues(msg, 'DKIM-Signature');
        assert.equal(sigs.length, 1, `exactly one DKIM-Signature expected:\n${raw}`);
        assert.match(sigs[0] ?? '', /d=example\.com;/);
        assert.match(sigs[0] ?? '', /h=[^;]*Subject/i);
        const v = await host().verifyDkim(msg.raw, id);
        assert.equal(v.pass, true, `${v.verdict}\n${v.authResults}\n${raw}`);
        // It is the rewritten Subject that is signed: the original one no longer verifies.
        const original = Buffer.from(
          raw.replace('Subject: [tagged] quarterly report', 'Subject: quarterly report'),
          'latin1',
        );
        assert.notEqual(original.toString('latin1'), raw);
        const w = await host().verifyDkim(original, `${id}-original-subject`);
        assert.equal(w.pass, false, w.verdict);
      });

      test("GTUBE is rejected with SpamAssassin's 550 and not delivered; the next message still goes through", async () => {
        const id = `pipeline-gtube-${key}`;
        const r = await sendMail(port(), {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'win',
            body: GTUBE,
            id,
          }),
        });
        assert.equal(r.eom?.code, 550, await explain(r.transcript));
        assert.match(r.eom?.text ?? '', SPAM_REJECT_REPLY);
        const after = `pipeline-after-gtube-${key}`;
        const ok = await sendMail(port(), {
          from: 'alice@example.com',
          rcpts: ['bob@example.net'],
          message: testMessage({
            from: 'alice@example.com',
            to: 'bob@example.net',
            subject: 'after',
            body: 'fine',
            id: after,
          }),
        });
        assert.equal(ok.eom?.code, 250, await explain(ok.transcript));
        await delivered(sink, after);
        assert.equal(findDelivered(sink, id), undefined, 'the GTUBE message was delivered');
      });
    },
  );
}
