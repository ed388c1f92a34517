/**
 * Pipeline conditions, dry-run and OpenDMARC behind a private Postfix (issue 14's acceptance).
 *
 * One Postfix with two smtpd services: the first keeps {daemon_name} = $myhostname, the second is a
 * submission service ({daemon_name} `submission`). milterd runs
 *   [subject-tagger module, spamass-milter in dry-run, OpenDKIM with `when: {daemon-name: submission}`]:
 * - conditions: only mail submitted on the submission port is signed (and verifies); the other is tagged
 *   but unsigned, and milterd counts the signer as skipped;
 * - dry-run: GTUBE is delivered (SpamAssassin's reject is logged and counted, not applied), and
 *   spamass-milter's header changes on clean mail are dropped (counted as dry-run actions).
 * A second milterd and Postfix run another configuration, [OpenDMARC], which adds its Authentication-Results.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdir, rm } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { PostfixMta } from './harness/postfix.js';
import { makeWorkDir } from './harness/proc.js';
import { SmtpSink } from './harness/sink.js';
import { delivered, headerValues, sendMail, testMessage } from './harness/deliver.js';
import { GTUBE, ThirdPartyMilters } from './harness/milters.js';
import { BUILT_FIXTURES, MilterdDaemon, yamlMembers } from './harness/milterd-daemon.js';

let dir = '';
let milters: ThirdPartyMilters | undefined;
const sink = new SmtpSink();

before(async () => {
  dir = await makeWorkDir('milterd-e2e-pipeline-postfix-');
  await sink.start();
  milters = await ThirdPartyMilters.create(path.join(dir, 'milters'));
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

const message = (id: string, subject: string, body = 'Hello.'): string =>
  testMessage({ from: 'alice@example.com', to: 'bob@example.net', subject, body, id });
const envelope = { from: 'alice@example.com', rcpts: ['bob@example.net'] };

describe('conditions and dry-run behind Postfix', { concurrency: 1 }, () => {
  let milterd: MilterdDaemon | undefined;
  let mta: PostfixMta | undefined;
  before(async () => {
    const spam = await host().startSpamassMilter('inet');
    const dkim = await host().startOpenDkimSigner('inet');
    const work = path.join(dir, 'conditions');
    await mkdir(work, { recursive: true });
    milterd = await MilterdDaemon.start({
      dir: work,
      filters: yamlMembers([
        { name: 'tagger', module: path.join(BUILT_FIXTURES, 'subject-tagger.js') },
        { name: 'spamassassin', upstream: spam.address, 'dry-run': true },
        { name: 'dkim', upstream: dkim.address, when: { 'daemon-name': 'submission' } },
      ]),
    });
    mta = await PostfixMta.start({
      dir: path.join(work, 'postfix'),
      sinkPort: sink.port,
      milter: { kind: 'inet', port: milterd.port },
      submission: true,
    });
  });
  after(async () => {
    await mta?.stop();
    await milterd?.stop();
  });
  const explain = async (what: string): Promise<string> =>
    `${what}\n--- milterd log ---\n${milterd?.logText().slice(-8000) ?? ''}\n--- maillog ---\n${(await mta?.log())?.slice(-6000) ?? ''}`;

  test('condition: OpenDKIM signs only what comes in on the submission port', async () => {
    if (!mta || !milterd) throw new Error('not started');
    const skippedBefore = await milterd.metric('milterd_member_skipped_total', { member: 'dkim' });
    const plain = await sendMail(mta.port, { ...envelope, message: message('cond-smtp', 'over smtp') });
    assert.equal(plain.eom?.code, 250, await explain(plain.transcript));
    const unsigned = await delivered(sink, 'cond-smtp');
    assert.deepEqual(headerValues(unsigned, 'Subject'), ['[pipeline] over smtp']);
    assert.deepEqual(headerValues(unsigned, 'DKIM-Signature'), [], unsigned.raw.toString('latin1'));
    assert.ok(
      (await milterd.metric('milterd_member_skipped_total', { member: 'dkim' })) > skippedBefore,
      'the signer was not counted as skipped',
    );

    const sub = await sendMail(mta.submissionPort, {
      ...envelope,
      message: message('cond-submission', 'submitted'),
    });
    assert.equal(sub.eom?.code, 250, await explain(sub.transcript));
    const signed = await delivered(sink, 'cond-submission');
    assert.deepEqual(headerValues(signed, 'Subject'), ['[pipeline] submitted']);
    assert.equal(headerValues(signed, 'DKIM-Signature').length, 1, signed.raw.toString('latin1'));
    const v = await host().verifyDkim(signed.raw, 'cond-submission');
    assert.equal(v.pass, true, v.verdict);
  });

  test("dry-run: SpamAssassin's reject of GTUBE is logged and counted, not applied; its changes are dropped", async () => {
    if (!mta || !milterd) throw new Error('not started');
    const labels = { member: 'spamassassin', decision: 'reject', mode: 'dry-run' };
    const rejectsBefore = await milterd.metric('milterd_member_decisions_total', labels);
    const gtube = await sendMail(mta.port, { ...envelope, message: message('dry-gtube', 'win', GTUBE) });
    assert.equal(gtube.eom?.code, 250, await explain(gtube.transcript));
    const msg = await delivered(sink, 'dry-gtube');
    assert.ok(msg.raw.includes(GTUBE));
    assert.deepEqual(headerValues(msg, 'Subject'), ['[pipeline] win']); // the other members still ran
    assert.equal(
      await milterd.metric('milterd_member_decisions_total', labels),
      rejectsBefore + 1,
      'one dry-run reject counted',
    );
    // The decision is in the log (debug: one line per member decision), marked as not applied.
    const line = milterd.daemon.lines.find(
      (l) =>
        l.msg === 'member decision' &&
        l.member === 'spamassassin' &&
        l.decision === 'reject' &&
        l.dryRun === true &&
        l.applied === false,
    );
    assert.ok(line, await explain('no log line for the dry-run reject'));

    const droppedBefore = await milterd.metric('milterd_member_actions_total', {
      member: 'spamassassin',
      result: 'dry-run',
    });
    const clean = await sendMail(mta.port, { ...envelope, message: message('dry-clean', 'clean') });
    assert.equal(clean.eom?.code, 250, await explain(clean.transcript));
    const cleanMsg = await delivered(sink, 'dry-clean');
    // spamass-milter adds X-Spam-Status (and more) to every message it scans: in dry-run none arrives.
    assert.deepEqual(headerValues(cleanMsg, 'X-Spam-Status'), [], cleanMsg.raw.toString('latin1'));
    assert.ok(
      (await milterd.metric('milterd_member_actions_total', { member: 'spamassassin', result: 'dry-run' })) >
        droppedBefore,
      'the dropped header changes were not counted',
    );
  });
});

describe('another configuration behind Postfix: [subject-tagger, OpenDMARC]', { concurrency: 1 }, () => {
  let milterd: MilterdDaemon | undefined;
  let mta: PostfixMta | undefined;
  before(async () => {
    const dmarc = await host().startOpenDmarc('inet');
    const work = path.join(dir, 'dmarc');
    await mkdir(work, { recursive: true });
    milterd = await MilterdDaemon.start({
      dir: work,
      filters: yamlMembers([
        { name: 'tagger', module: path.join(BUILT_FIXTURES, 'subject-tagger.js') },
        { name: 'dmarc', upstream: dmarc.address },
      ]),
    });
    mta = await PostfixMta.start({
      dir: path.join(work, 'postfix'),
      sinkPort: sink.port,
      milter: { kind: 'inet', port: milterd.port },
    });
  });
  after(async () => {
    await mta?.stop();
    await milterd?.stop();
  });

  test('OpenDMARC adds its Authentication-Results', async () => {
    if (!mta) throw new Error('not started');
    const r = await sendMail(mta.port, { ...envelope, message: message('dmarc-pipeline', 'dmarc') });
    assert.equal(r.eom?.code, 250, `${r.transcript}\n${milterd?.logText().slice(-6000) ?? ''}`);
    const msg = await delivered(sink, 'dmarc-pipeline');
    assert.deepEqual(headerValues(msg, 'Subject'), ['[pipeline] dmarc']);
    const ar = headerValues(msg, 'Authentication-Results');
    assert.equal(ar.length, 1, msg.raw.toString('latin1'));
    assert.match(ar[0] ?? '', /^mta\.test; dmarc=\w+ .*header\.from=example\.com/);
  });
});
