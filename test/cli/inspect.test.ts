/**
 * `milterd inspect` as a command: the built binary, driven by milterd's MTA-side client (the same
 * conversation a Postfix has with it is in test/e2e/inspect.test.ts). Text lines per event with the
 * macros, what it negotiates, no modification ever, a broken packet closing only its connection, and a
 * clean exit on SIGTERM.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { formatInspectEvent, INSPECT_MACROS } from '../../src/cli/inspect.js';
import { SMFIF_SETSYMLIST, SMFIP_HDR_LEADSPC, SMFIP_RCPT_REJ } from '../../src/protocol/constants.js';
import { BIN, cleanEnv, runMilterd } from './helpers.js';

/** Start `milterd inspect` on an ephemeral port; its stdout lines, and its milter spec. */
async function startInspect(t: import('node:test').TestContext, args: string[] = []) {
  const child = spawn(process.execPath, [BIN, 'inspect', '--listen', 'inet:0@127.0.0.1', ...args], {
    env: cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
  const lines: string[] = [];
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    const parts = out.split('\n');
    out = parts.pop() ?? '';
    lines.push(...parts);
  });
  let err = '';
  child.stderr.setEncoding('utf8');
  for (;;) {
    const [chunk] = (await once(child.stderr, 'data')) as [string];
    err += chunk;
    const m = /listening on (inet:\d+@127\.0\.0\.1)/.exec(err);
    if (m) return { child, lines, spec: m[1] as string, stderr: () => err };
  }
}

async function until(pred: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(pred(), `timed out waiting for ${what}`);
}

test('milterd inspect: one text line per event with its macros; everything continues, nothing is modified', async (t) => {
  const { child, lines, spec } = await startInspect(t);
  const client = await MilterClient.connect(spec);
  // What it asked for: every step, HDR_LEADSPC and RCPT_REJ, no action but SETSYMLIST, every macro.
  assert.equal(client.negotiated.actions, SMFIF_SETSYMLIST);
  assert.equal(client.negotiated.protocol, SMFIP_HDR_LEADSPC | SMFIP_RCPT_REJ);
  assert.equal(client.negotiated.macroLists[0], INSPECT_MACROS.join(' '));
  assert.equal(client.negotiated.macroLists[5], INSPECT_MACROS.join(' '));
  const result = await playMessage(client, {
    macros: { connect: { j: 'mx.example', '{daemon_name}': 'smtpd' }, eom: { i: 'ABC123' } },
    connect: { hostname: 'client.example', family: 'inet', port: 2525, address: '192.0.2.7' },
    helo: 'client.example',
    sender: '<a@example.org>',
    recipients: [{ address: '<b@example.net>', args: ['NOTIFY=NEVER'] }],
    headers: [['Subject', ' two words']],
    body: 'hello\r\n',
  });
  await client.quit();
  assert.equal(result.eom?.reply.kind, 'continue');
  assert.deepEqual(result.eom?.modifications, []);
  await until(() => lines.some((l) => / #1 close$/.test(l)), 'the close line');
  const body = lines.map((l) => l.replace(/^\S+ /, '')); // without the time stamp
  assert.match(body[0] ?? '', /^#1 open peer=127\.0\.0\.1:\d+$/);
  assert.match(
    body[1] ?? '',
    /^#1 optneg version=6 actions=0x1ff protocol=0x1fffff agreed="version=6 actions=0x100 protocol=0x100800"$/,
  );
  assert.deepEqual(body.slice(2), [
    '#1 connect hostname=client.example family=inet address=192.0.2.7 port=2525 | j=mx.example {daemon_name}=smtpd',
    '#1 helo hostname=client.example',
    '#1 mail sender=<a@example.org> args=[]',
    '#1 rcpt recipient=<b@example.net> args=NOTIFY=NEVER',
    '#1 data',
    '#1 header name=Subject value=" two words"',
    '#1 eoh',
    '#1 body bytes=7',
    '#1 eom bytes=0 | i=ABC123',
    '#1 quit',
    '#1 close',
  ]);
  child.kill('SIGTERM');
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 0);
});

test('milterd inspect: a broken packet closes only its connection, with an error line; --json', async (t) => {
  const { lines, spec } = await startInspect(t, ['--json']);
  const port = Number(/inet:(\d+)@/.exec(spec)?.[1]);
  const bad = net.connect(port, '127.0.0.1');
  await once(bad, 'connect');
  bad.write(Buffer.from([0, 0, 0, 0])); // a frame of length 0
  await once(bad, 'close');
  const client = await MilterClient.connect(spec);
  await client.quit();
  await until(() => lines.filter((l) => l.includes('"close"')).length === 2, 'two close lines');
  const events = lines.map(
    (l) => JSON.parse(l) as { conn: number; event: string; fields: Record<string, unknown> },
  );
  const error = events.find((e) => e.event === 'error');
  assert.equal(error?.conn, 1);
  assert.equal(error?.fields.code, 'ERR_MILTER_FRAME_EMPTY');
  assert.deepEqual(
    events.filter((e) => e.conn === 2).map((e) => e.event),
    ['open', 'optneg', 'quit', 'close'],
  );
});

test('inspect text format: bare tokens when plain, JSON-quoted otherwise, 8-bit bytes escaped', () => {
  assert.equal(
    formatInspectEvent({
      time: 'T',
      conn: 3,
      event: 'header',
      fields: { name: 'X', value: 'caf\udce9 "q"' },
      macros: { '{a}': '', b: 'plain' },
    }),
    'T #3 header name=X value="caf\\udce9 \\"q\\"" | {a}="" b=plain',
  );
});

test('milterd inspect: a socket in use exits 4, a bad spec 2, without a stack trace', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const port = (busy.address() as net.AddressInfo).port;
  const r = await runMilterd(['inspect', '--listen', `inet:${port}@127.0.0.1`]);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /ERR_MILTER_SOCKET_IN_USE/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  const bad = await runMilterd(['inspect', '--listen', 'tcp:nonsense']);
  assert.equal(bad.code, 2);
});
