/**
 * Logging never blocks mail: with the daemon's stdout a pipe nobody reads, milter sessions keep getting
 * their replies and /healthz keeps answering; the log lines that do not fit the bounded buffer are
 * dropped and counted; once the reader comes back, logging resumes and says how many lines it lost.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { Daemon, httpGet, parsePrometheus, sampleValue } from './helpers.js';

/** A daemon on loopback with the admin endpoint, logging at trace. */
function stallingDaemon(...extra: string[]): Daemon {
  // Every session logs a dozen lines at trace: a few hundred sessions overflow the 1 MiB buffer.
  return new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--log-level',
    'trace',
    ...extra,
  ]);
}

/** One whole message through the daemon; returns what it answered. */
async function oneMessage(milter: string, n: number): Promise<{ stoppedAt: string; header: boolean }> {
  // A short client timeout: a daemon whose event loop hangs on a write fails here instead of hanging.
  const client = await MilterClient.connect(milter, { timeoutMs: 5000 });
  try {
    const result = await playMessage(client, {
      connect: { hostname: 'client.example.org', family: 'inet', port: 40000, address: '192.0.2.30' },
      helo: 'client.example.org',
      macros: { envfrom: { i: `STALL${n}` } },
      sender: '<a@example.org>',
      recipients: ['<b@example.net>'],
      headers: [['Subject', `stalled stdout ${n}`]],
      body: 'hello\r\n',
    });
    await client.quit();
    const header = (result.eom?.modifications ?? []).some(
      (m) => m.kind === 'addHeader' && m.name === 'X-Milterd',
    );
    return { stoppedAt: result.stoppedAt ?? 'end', header };
  } finally {
    client.close();
  }
}

/**
 * Stop reading the daemon's stdout and drive sessions until /metrics counts `atLeast` dropped lines:
 * every reply and every /healthz answer must be right meanwhile. Returns the dropped count.
 */
async function stall(d: Daemon, milter: string, adminPort: number, atLeast: number): Promise<number> {
  // The pipe (64 KiB) and this side's stream buffer fill, then every write would block.
  const stdout = d.child.stdout;
  assert.ok(stdout);
  stdout.pause();
  const seen = d.lines.length + d.strayStdout.length;
  let dropped = 0;
  let sessions = 0;
  // Enough sessions to fill the kernel pipe, this side's read buffer and the daemon's log buffer.
  while (dropped < atLeast) {
    assert.ok(sessions < 5000, 'the log buffer never overflowed');
    const batch = await Promise.all(Array.from({ length: 10 }, (_, i) => oneMessage(milter, sessions + i)));
    sessions += batch.length;
    for (const r of batch) assert.deepEqual(r, { stoppedAt: 'eom', header: true });
    const health = await httpGet(adminPort, '/healthz');
    assert.equal(health.status, 200);
    const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
    dropped = sampleValue(metrics, 'milterd_log_lines_dropped_total');
  }
  assert.equal(d.lines.length + d.strayStdout.length, seen, 'nothing was read while stalled');
  return dropped;
}

test('a stalled stdout changes no milter reply and no /healthz answer; logging resumes after it', async (t) => {
  const d = stallingDaemon();
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  assert.deepEqual(await oneMessage(milter, 0), { stoppedAt: 'eom', header: true });
  await stall(d, milter, adminPort, 200);

  // The reader comes back: the buffered lines arrive, then the gap is reported, and new lines follow.
  d.child.stdout?.resume();
  const gap = await d.waitFor(
    (l) => l.msg === 'log lines were dropped: stdout was not read fast enough',
    'the dropped-lines warning',
  );
  assert.ok((gap.dropped as number) >= 200);
  assert.deepEqual(await oneMessage(milter, 999_999), { stoppedAt: 'eom', header: true });
  await d.waitFor(
    (l) => l.queueId === 'STALL999999' || l.txn === 'STALL999999',
    'a line logged after the stall',
  );
  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  assert.ok(sampleValue(metrics, 'milterd_log_lines_dropped_total') >= 200);

  // The last line is not lost at exit when the pipe is read.
  const closed = once(d.child, 'close');
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
  await closed; // every byte of stdout read
  assert.ok(d.lines.some((l) => l.msg === 'milterd stopped'));
});

test('--log-pretty: a stalled stdout blocks nothing either, and the text lines resume', async (t) => {
  const d = stallingDaemon('--log-pretty');
  t.after(() => d.kill());
  // Pretty lines are not JSON: they land in strayStdout. Ports come from the started line.
  let started: RegExpExecArray | null = null;
  for (let i = 0; i < 200 && started === null; i++) {
    await new Promise((r) => setTimeout(r, 50));
    started = /milterd started .*listen=\["(inet:\d+@127\.0\.0\.1)"\]/.exec(d.strayStdout.join('\n'));
  }
  const admin = /admin endpoint listening admin="?inet:(\d+)@/.exec(d.strayStdout.join('\n'));
  assert.ok(started && admin, d.strayStdout.join('\n'));
  const milter = started[1] as string;
  const adminPort = Number(admin[1]);
  await stall(d, milter, adminPort, 200);
  d.child.stdout?.resume();
  const closed = once(d.child, 'close');
  for (let i = 0; i < 200 && !d.strayStdout.some((l) => l.includes('log lines were dropped')); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
  await closed;
  const text = d.strayStdout.join('\n');
  assert.match(text, /WARN {2}log lines were dropped: stdout was not read fast enough dropped=\d+/);
  assert.match(text, /INFO {2}milterd stopped/);
});
