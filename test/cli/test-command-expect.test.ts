/**
 * `milterd test` for CI and for operators (issue 16): `--expect DECISION[@STAGE]` and its exit code, connect
 * errors that name their cause (refused, no such socket, refused while draining or at the limit), the hint
 * for Postfix's `inet:HOST:PORT`, HELO from `--connect-name`, and the stage list in the `--macro` error.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runTest } from '../../src/cli/test-command.js';
import { MilterClient } from '../../src/client/index.js';
import type { Filter } from '../../src/index.js';
import { startServer } from '../helpers/server.js';
import { Daemon, FIXTURES, runMilterd } from './helpers.js';

const EML = `${FIXTURES}message.eml`;

/** A milter that rejects one recipient with a 5xx reply and tempfails a message from <bad@…>. */
const picky: Filter = {
  envfrom: (_ctx, from) => (from.includes('bad@') ? 'tempfail' : undefined),
  envrcpt: (_ctx, rcpt) =>
    rcpt.includes('nobody@') ? { kind: 'reject', reply: { code: 550, text: 'no such user' } } : undefined,
};

test('milterd test --expect: exit 0 when every expectation holds, 6 with one line per miss', async (t) => {
  const { address } = await startServer(t, { filter: picky });
  const milter = `inet:${address.port}@127.0.0.1`;
  const run = (...args: string[]): ReturnType<typeof runMilterd> =>
    runMilterd([
      'test',
      EML,
      '--milter',
      milter,
      '--rcpt',
      'nobody@example.net',
      '--rcpt',
      'b@example.net',
      ...args,
    ]);

  const ok = await run('--expect', 'accept', '--expect', 'reject@envrcpt', '--expect', 'continue@envfrom');
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stderr, '');

  const missed = await run(
    '--expect',
    'reject',
    '--expect',
    'reject@envfrom',
    '--expect',
    'continue@envrcpt',
  );
  assert.equal(missed.code, 6, missed.stderr);
  // The report is still printed; each unmet expectation is named on stderr.
  assert.match(missed.stdout, /^result\s+accepted/m);
  assert.deepEqual(missed.stderr.trimEnd().split('\n'), [
    'milterd: expected reject, the milter decided accept at eom',
    'milterd: expected reject@envfrom, the milter decided continue at envfrom',
  ]);

  // The final decision of a message that ended early: tempfail at MAIL, nothing after it.
  const early = await run('--from', 'bad@example.org', '--expect', 'tempfail', '--expect', 'continue@eom');
  assert.equal(early.code, 6);
  assert.match(early.stderr, /expected continue@eom, the milter decided nothing \(not reached\) at eom/);
  assert.doesNotMatch(early.stderr, /expected tempfail/);

  // Not the usage-error code for a miss, but a usage error for a bad expectation.
  const bad = await run('--expect', 'reject@rcp');
  assert.equal(bad.code, 2);
  assert.match(
    bad.stderr,
    /unknown stage "rcp"; stages: connect, helo, envfrom, envrcpt, data, unknown, header, eoh, body, eom/,
  );
  const help = await runMilterd(['--help']);
  assert.match(help.stdout, /^ {2}6 {2}test: the milter decided otherwise than an --expect said$/m);
});

test('milterd test names the connect error: ECONNREFUSED, ENOENT, and Postfix spec form gets a hint', async () => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const refused = await runMilterd(['test', EML, '--milter', `inet:${port}@127.0.0.1`]);
  assert.equal(refused.code, 5);
  assert.match(refused.stderr, /connection refused \(ECONNREFUSED\)/);
  assert.doesNotMatch(refused.stderr, /milter connection closed/);

  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-expect-'));
  try {
    const missing = await runMilterd(['test', EML, '--milter', `unix:${dir}/none.sock`]);
    assert.equal(missing.code, 5);
    assert.match(missing.stderr, /no such socket \(ENOENT\)/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  const postfix = await runMilterd(['test', EML, '--milter', 'inet:127.0.0.1:8891']);
  assert.equal(postfix.code, 2);
  assert.match(postfix.stderr, /did you mean inet:8891@127\.0\.0\.1\?/);
  const postfix6 = await runMilterd(['test', EML, '--milter', 'inet:[::1]:8891']);
  assert.equal(postfix6.code, 2);
  assert.match(postfix6.stderr, /did you mean inet6:8891@::1\?/);
});

test('milterd test: a connection turned away before negotiation says refused while draining or at the limit', async (t) => {
  const { address } = await startServer(t, { filter: {}, maxConnections: 1 });
  const milter = `inet:${address.port}@127.0.0.1`;
  const held = await MilterClient.connect(milter, { timeoutMs: 5000 });
  t.after(() => held.close());
  const r = await runMilterd(['test', EML, '--milter', milter]);
  assert.equal(r.code, 5, r.stdout);
  assert.match(r.stderr, /refused while draining \(or at the connection limit\)/);
  assert.doesNotMatch(r.stderr, /milter connection closed/);
});

test('milterd test against a draining milterd: refused, with the cause named', async (t) => {
  const daemon = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'off']);
  t.after(() => daemon.kill());
  const { milter } = await daemon.started();
  // An open session keeps the daemon draining instead of exiting.
  const held = await MilterClient.connect(milter, { timeoutMs: 5000 });
  t.after(() => held.close());
  daemon.signal('SIGTERM');
  await daemon.waitFor((l) => l.msg === 'closing', 'closing');
  const r = await runMilterd(['test', EML, '--milter', milter]);
  assert.equal(r.code, 5);
  // A draining milterd has closed its listener: the kernel refuses, the client says so and why it may be.
  assert.match(
    r.stderr,
    /connection refused \(ECONNREFUSED\): nothing listens there \(or a milterd is draining\)/,
  );
});

test('milterd test: HELO defaults to --connect-name, else the address literal; --macro lists the stages', async (t) => {
  const helos: string[] = [];
  const { address } = await startServer(t, { filter: { helo: (_ctx, name) => void helos.push(name) } });
  const base = {
    milter: `inet:${address.port}@127.0.0.1`,
    connectAddr: '192.0.2.7',
    connectPort: 54321,
    timeout: 5000,
  };
  let out = '';
  assert.equal(
    await runTest(EML, { ...base, connectName: 'mx.example.org' }, (s) => void (out += s)),
    0,
    out,
  );
  assert.equal(await runTest(EML, base, (s) => void (out += s)), 0, out);
  assert.equal(await runTest(EML, { ...base, helo: 'given.example' }, (s) => void (out += s)), 0, out);
  assert.deepEqual(helos, ['mx.example.org', '[192.0.2.7]', 'given.example']);

  const r = await runMilterd(['test', EML, '--macro', 'rcpt:x=1']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /stage one of: connect, helo, envfrom, envrcpt, data, eoh, eom/);
});
