/**
 * Upstream faults behind a private Postfix (issue 14's acceptance): milterd runs
 * [subject-tagger module, OpenDKIM signer as upstream] with short upstream timeouts, the default failure
 * action (tempfail) and a breaker; the upstream is killed in the middle of an SMTP session, stopped
 * (SIGSTOP: it hangs), and replaced by a port nobody listens on. Each time:
 * - the SMTP client gets a 4xx (tempfail) and the message is not delivered: no mail goes out without the
 *   signer that must see it, and none is lost (the client was told to retry);
 * - Postfix never desyncs: its maillog has no milter protocol error, and once the upstream is back later
 *   sessions on the same Postfix are delivered, signed (the breaker lets them through again);
 * - milterd keeps no upstream connection and no file descriptor beyond what it had before (/proc/PID/fd).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { PostfixMta } from './harness/postfix.js';
import { makeWorkDir, sleep } from './harness/proc.js';
import { SmtpSink } from './harness/sink.js';
import { SmtpClient, type SmtpReply } from './harness/smtp-client.js';
import { delivered, findDelivered, headerValues, sendMail, testMessage } from './harness/deliver.js';
import { ThirdPartyMilters, type RunningMilter } from './harness/milters.js';
import { BUILT_FIXTURES, MilterdDaemon, yamlMembers } from './harness/milterd-daemon.js';

/** Breaker: open after 2 failures, probe again after 1 s. */
const BREAKER = { failures: 2, open: '1s' };
/** Well inside Postfix's 5 s milter timeouts (harness/mta.ts), so milterd answers first. */
const TIMEOUTS = { connect: '1s', command: '1s', eom: '2s' };
/** Bounded retries while the breaker is open (each one a full SMTP session). */
const MAX_ATTEMPTS = 40;

let dir = '';
let milters: ThirdPartyMilters | undefined;
let dkim: RunningMilter | undefined;
let dkimPort = 0;
let milterd: MilterdDaemon | undefined;
let mta: PostfixMta | undefined;
let baselineFds = 0;
let seq = 0;
const sink = new SmtpSink();

function host(): ThirdPartyMilters {
  if (!milters) throw new Error('milters not started');
  return milters;
}

function running(): { mta: PostfixMta; milterd: MilterdDaemon } {
  if (!mta || !milterd) throw new Error('not started');
  return { mta, milterd };
}

const envelope = { from: 'alice@example.com', rcpts: ['bob@example.net'] };
const nextId = (what: string): string => `fault-${what}-${++seq}`;
const message = (id: string): string =>
  testMessage({ from: 'alice@example.com', to: 'bob@example.net', subject: id, body: 'Hello.', id });

async function explain(what: string): Promise<string> {
  return `${what}\n--- milterd log ---\n${milterd?.logText().slice(-8000) ?? ''}\n--- maillog ---\n${(await mta?.log())?.slice(-6000) ?? ''}`;
}

/** The first 4xx/5xx reply of a transaction (greeting, MAIL, RCPT, end of message). */
function refusal(r: Awaited<ReturnType<typeof sendMail>>): SmtpReply | undefined {
  return [r.greeting, r.mail, ...r.rcpts, r.data, r.eom].find((x) => x !== undefined && x.code >= 400);
}

/** A message that must be refused with a 4xx (tempfail) and never delivered. */
async function expectTempfail(what: string): Promise<void> {
  const id = nextId(what);
  const r = await sendMail(running().mta.port, { ...envelope, message: message(id) });
  const refused = refusal(r);
  assert.ok(refused, await explain(`${what}: not refused\n${r.transcript}`));
  assert.match(String(refused.code), /^4\d\d$/, await explain(`${what}: not a tempfail\n${r.transcript}`));
  assert.equal(r.eom?.code === 250, false);
  // Postfix has nothing of it in its queue either: it was refused, not accepted.
  assert.equal(findDelivered(sink, id), undefined, `${what}: delivered anyway`);
}

/** Sessions go on being tempfailed until the breaker lets one through; it must arrive signed. */
async function expectRecovery(what: string): Promise<number> {
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const id = nextId(`${what}-recovery`);
    const r = await sendMail(running().mta.port, { ...envelope, message: message(id) });
    if (r.eom?.code === 250) {
      const msg = await delivered(sink, id);
      assert.equal(headerValues(msg, 'DKIM-Signature').length, 1, msg.raw.toString('latin1'));
      const v = await host().verifyDkim(msg.raw, id);
      assert.equal(v.pass, true, v.verdict);
      return attempt;
    }
    const refused = refusal(r);
    assert.match(String(refused?.code), /^4\d\d$/, await explain(`${what}: ${r.transcript}`));
    assert.equal(findDelivered(sink, id), undefined);
    await sleep(250);
  }
  throw new Error(await explain(`${what}: no session got through after ${MAX_ATTEMPTS} attempts`));
}

/** How often milterd logged the signer's breaker opening. */
function breakerOpenings(): number {
  return running().milterd.daemon.lines.filter((l) => l.member === 'dkim' && l.state === 'open').length;
}

async function noDesync(): Promise<void> {
  const log = (await running().mta.log()) ?? '';
  // What Postfix logs when a milter conversation goes wrong (unexpected reply, packet length, bad command).
  assert.doesNotMatch(log, /milter.*(unexpected|unreasonable|bad response|protocol error|desync)/i, log);
}

async function noLeak(what: string): Promise<void> {
  const settled = await running().milterd.settled(dkimPort, baselineFds);
  assert.equal(settled.connections, 0, await explain(`${what}: upstream connections left open`));
  assert.ok(
    settled.fds <= baselineFds,
    await explain(`${what}: ${settled.fds} fds open, ${baselineFds} before`),
  );
}

before(async () => {
  dir = await makeWorkDir('milterd-e2e-pipeline-faults-');
  await sink.start();
  milters = await ThirdPartyMilters.create(path.join(dir, 'milters'));
  dkim = await milters.startOpenDkimSigner('inet');
  dkimPort = dkim.endpoint.kind === 'inet' ? dkim.endpoint.port : 0;
  milterd = await MilterdDaemon.start({
    dir,
    filters: yamlMembers([
      { name: 'tagger', module: path.join(BUILT_FIXTURES, 'subject-tagger.js') },
      { name: 'dkim', upstream: dkim.address, timeouts: TIMEOUTS, breaker: BREAKER },
    ]),
  });
  mta = await PostfixMta.start({
    dir: path.join(dir, 'postfix'),
    sinkPort: sink.port,
    milter: { kind: 'inet', port: milterd.port },
  });
});

after(async () => {
  await mta?.stop();
  await milterd?.stop();
  await milters?.stop();
  await sink.stop();
  if (process.env.MILTERD_E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
});

describe('upstream faults behind Postfix', { concurrency: 1 }, () => {
  test('baseline: a message is tagged and signed; milterd holds no upstream connection afterwards', async () => {
    await expectRecovery('baseline');
    await running().milterd.metric('milterd_member_decisions_total'); // the admin endpoint's own fds, once
    const settled = await running().milterd.settled(dkimPort, Number.MAX_SAFE_INTEGER);
    assert.equal(settled.connections, 0);
    baselineFds = settled.fds;
  });

  test('upstream killed in the middle of an SMTP session: tempfail, nothing delivered, later sessions go on', async () => {
    if (!dkim) throw new Error('no upstream');
    const errorsBefore = await running().milterd.metric('milterd_member_errors_total', { member: 'dkim' });
    const id = nextId('killed');
    const client = new SmtpClient();
    await client.connect('127.0.0.1', running().mta.port);
    let replies: SmtpReply[];
    try {
      assert.equal((await client.readReply()).code, 220);
      assert.equal((await client.command('EHLO client.example.com')).code, 250);
      // milterd opened its upstream connection when Postfix connected; the upstream now dies.
      assert.equal((await client.command(`MAIL FROM:<${envelope.from}>`)).code, 250);
      await host().signal(dkim, 'SIGKILL');
      replies = [await client.command('RCPT TO:<bob@example.net>')];
      if (replies[0]?.code === 250) {
        const data = await client.command('DATA');
        replies.push(data);
        if (data.code === 354)
          replies.push(await client.content(Buffer.from(message(id).replace(/\n/g, '\r\n'))));
      }
      if (!client.isClosed) await client.command('QUIT').catch(() => undefined);
    } finally {
      client.close();
    }
    const refused = replies.find((r) => r.code >= 400);
    assert.ok(refused, await explain(`not refused: ${client.transcript.join('\n')}`));
    assert.match(String(refused.code), /^4\d\d$/, client.transcript.join('\n'));
    assert.equal(findDelivered(sink, id), undefined, 'delivered without the signer');
    // While it is down: every session is tempfailed (refused connections, then the open breaker).
    await expectTempfail('killed-down-1');
    await expectTempfail('killed-down-2');
    assert.ok(
      (await running().milterd.metric('milterd_member_errors_total', { member: 'dkim' })) > errorsBefore,
      'the failures were not counted',
    );
    dkim = await host().startOpenDkimSigner('inet', dkimPort);
    await expectRecovery('killed');
    await noDesync();
    await noLeak('killed');
  });

  test('upstream hangs (SIGSTOP): tempfail within the MTA timeouts, nothing delivered, later sessions go on', async () => {
    if (!dkim) throw new Error('no upstream');
    const timeoutsBefore = await running().milterd.metric('milterd_member_timeouts_total', {
      member: 'dkim',
    });
    await host().signal(dkim, 'SIGSTOP');
    try {
      await expectTempfail('hung-1');
      await expectTempfail('hung-2');
    } finally {
      await host().signal(dkim, 'SIGCONT');
    }
    assert.ok(
      (await running().milterd.metric('milterd_member_timeouts_total', { member: 'dkim' })) > timeoutsBefore,
      await explain('the hang was not counted as a timeout'),
    );
    await expectRecovery('hung');
    await noDesync();
    await noLeak('hung');
  });

  test('upstream refusing connections: tempfail, the breaker opens, nothing delivered; back, sessions go on', async () => {
    if (!dkim) throw new Error('no upstream');
    await host().stopOne(dkim);
    const openingsBefore = breakerOpenings();
    for (let i = 1; i <= 4; i++) await expectTempfail(`refused-${i}`);
    // Two failures in a row open the breaker (BREAKER.failures): milterd logs it for the member.
    assert.ok(breakerOpenings() > openingsBefore, await explain('the breaker did not open'));
    const errors = await running().milterd.metric('milterd_member_errors_total', { member: 'dkim' });
    assert.ok(errors > 0, 'the refused connections were not counted as member errors');
    assert.equal(
      await running().milterd.metric('milterd_member_breaker_state', { member: 'dkim' }),
      1,
      'the breaker gauge shows not exactly one current state',
    );
    dkim = await host().startOpenDkimSigner('inet', dkimPort);
    await expectRecovery('refused');
    await noDesync();
    await noLeak('refused');
  });
});
