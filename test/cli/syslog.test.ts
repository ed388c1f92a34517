/**
 * `--log-syslog`: the daemon's log lines reach a real local syslog socket (a Unix datagram socket bound
 * by a Python receiver, as rsyslog binds /dev/log) and a UDP receiver, with the facility and severity in
 * PRI, the tag milterd[PID] and the RFC 3164 or 5424 header; a missing socket is refused at start; a
 * stalled syslog drops lines (counted in /metrics) while stdout and the milter go on.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Daemon, httpGet, parsePrometheus, runMilterd, sampleValue } from './helpers.js';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-syslog-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Messages received by a syslog stand-in, with a wait for one that matches. */
class Received {
  readonly messages: string[] = [];
  private waiters: Array<() => void> = [];

  push(message: string): void {
    this.messages.push(message);
    for (const w of this.waiters.splice(0)) w();
  }

  async waitFor(pattern: RegExp, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.find((m) => pattern.test(m));
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`no syslog message ${pattern}: ${this.messages.join('\n')}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

const RECEIVER_PY = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    print(json.dumps(s.recv(65536).decode("utf-8", "replace")), flush=True)
`;

/** A Unix datagram socket at `sock`, bound by python3 (Node cannot bind one); stopped by pid. */
async function unixReceiver(
  t: { after: (fn: () => void) => void },
  dir: string,
  sock: string,
): Promise<{ received: Received; child: ChildProcess }> {
  const script = path.join(dir, 'receiver.py');
  await writeFile(script, RECEIVER_PY);
  const child = spawn('python3', [script, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const received = new Received();
  let ready: () => void = () => undefined;
  const isReady = new Promise<void>((resolve) => (ready = resolve));
  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line === 'ready') ready();
      else received.push(JSON.parse(line) as string);
    }
  });
  await isReady;
  return { received, child };
}

const RFC3164 = (pri: number, pid: number | undefined): string =>
  `^<${pri}>[A-Z][a-z]{2} [ \\d]\\d \\d{2}:\\d{2}:\\d{2} \\S+ milterd\\[${pid}\\]: `;

test('unix socket, RFC 3164, facility local3 from the config file: PRI per level, tag milterd[pid]', async (t) => {
  const dir = await tempDir(t);
  const sock = path.join(dir, 'log.sock');
  const { received } = await unixReceiver(t, dir, sock);
  const cfg = path.join(dir, 'milterd.yaml');
  const config = `listen: [inet:0@127.0.0.1]\nlogSyslog: unix:${sock}\nlogSyslogFacility: local3\n`;
  await writeFile(cfg, config);
  const d = new Daemon(['--config', cfg]);
  t.after(() => d.kill());
  await d.started();
  const pid = d.child.pid;
  // local3 (19) × 8 + info (6) = 158.
  const started = await received.waitFor(/milterd started/);
  assert.match(
    started,
    new RegExp(`${RFC3164(158, pid)}milterd started version=\\S+ listen=\\["inet:\\d+@127\\.0\\.0\\.1"\\]`),
  );

  // An error line: a reload refused. local3 × 8 + err (3) = 155.
  await writeFile(cfg, config + 'logLevel: loud\n');
  d.signal('SIGHUP');
  const refused = await received.waitFor(/reload refused/);
  assert.match(
    refused,
    new RegExp(`${RFC3164(155, pid)}reload refused: the previous configuration stays in force`),
  );
  assert.doesNotMatch(refused, /\n/);

  // The last line is written before the process exits.
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
  assert.match(
    await received.waitFor(/milterd stopped/, 5_000),
    new RegExp(`${RFC3164(158, pid)}milterd stopped signal=SIGTERM$`),
  );
  // stdout got every line too, syslog the same ones in the same order.
  const stdoutMsgs = d.lines.map((l) => l.msg as string);
  const syslogMsgs = received.messages.map((m) => /\]: (.*?)(?: \w+=.*)?$/.exec(m)?.[1]);
  assert.deepEqual(syslogMsgs, stdoutMsgs);
});

test('UDP, RFC 5424 from the environment, default facility mail: info and warn', async (t) => {
  const dir = await tempDir(t);
  const server = dgram.createSocket('udp4');
  t.after(() => server.close());
  const received = new Received();
  server.on('message', (m) => received.push(m.toString('utf8')));
  await new Promise<void>((resolve) => server.bind(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const cfg = path.join(dir, 'milterd.yaml');
  await writeFile(cfg, 'backlog: 100\n');
  const d = new Daemon(['--config', cfg, '--listen', 'inet:0@127.0.0.1'], {
    MILTERD_LOG_SYSLOG: `udp:127.0.0.1:${port}`,
    MILTERD_LOG_SYSLOG_FORMAT: 'rfc5424',
  });
  t.after(() => d.kill());
  await d.started();
  const pid = d.child.pid;
  const header = (pri: number): string =>
    `^<${pri}>1 \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(\\.\\d+)?(Z|[+-]\\d\\d:\\d\\d) \\S+ milterd ${pid} - (-|\\[.*?\\]) `;
  // mail (2) × 8 + info (6) = 22; + warning (4) = 20.
  assert.match(await received.waitFor(/milterd started/), new RegExp(`${header(22)}milterd started `));
  await writeFile(cfg, 'backlog: 200\n');
  d.signal('SIGHUP');
  assert.match(
    await received.waitFor(/only take effect after a restart/),
    new RegExp(
      `${header(20)}reload: these settings only take effect after a restart settings=\\["backlog"\\]$`,
    ),
  );
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('a missing syslog socket is refused at start, before listening (exit 3)', async (t) => {
  const dir = await tempDir(t);
  const sock = path.join(dir, 'absent.sock');
  const r = await runMilterd(['serve', '--listen', 'inet:0@127.0.0.1', '--log-syslog', `unix:${sock}`]);
  assert.equal(r.code, 3);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    `milterd: --log-syslog unix:${sock}: no such socket (ENOENT): is a syslog daemon (rsyslog, syslog-ng, journald) running?\n`,
  );
  const file = path.join(dir, 'file');
  await writeFile(file, '');
  const r2 = await runMilterd(['serve', '--listen', 'inet:0@127.0.0.1', '--log-syslog', file]);
  assert.equal(r2.code, 3);
  assert.equal(r2.stderr, `milterd: --log-syslog unix:${file}: not a socket\n`);
  const r3 = await runMilterd(['check-config', '--log-syslog', 'tcp:127.0.0.1:514']);
  assert.equal(r3.code, 2);
  assert.match(
    r3.stderr,
    /--log-syslog.*expected unix:\/path \(e\.g\. unix:\/dev\/log\), udp:HOST:PORT or off/,
  );
});

test('a stalled syslog drops lines (counted) while stdout and the milter go on; the gap is logged', async (t) => {
  const dir = await tempDir(t);
  const sock = path.join(dir, 'log.sock');
  const { received, child } = await unixReceiver(t, dir, sock);
  const d = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--log-level',
    'debug',
    '--log-buffer',
    '64KiB',
    '--log-syslog',
    `unix:${sock}`,
  ]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  await received.waitFor(/milterd started/);
  // The receiver stops reading: its queue, then logger's stdin pipe, then milterd's buffer fill up.
  assert.ok(child.pid);
  process.kill(child.pid, 'SIGSTOP');
  t.after(() => {
    if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGCONT');
  });
  const port = Number(/^inet:(\d+)@/.exec(milter)?.[1]);
  let dropped = 0;
  let connections = 0;
  while (dropped === 0 && connections < 5000) {
    // Connections that open and close: two debug lines each.
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        const s = net.connect(port, '127.0.0.1');
        await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
        s.end();
        await new Promise<void>((resolve) => s.once('close', () => resolve()));
      }),
    );
    connections += 50;
    const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
    dropped = sampleValue(metrics, 'milterd_log_lines_dropped_total', { output: 'syslog' });
  }
  assert.ok(dropped > 0, `nothing dropped after ${connections} connections`);
  // Neither the milter nor stdout is held back: one more connection is served and logged on stdout.
  const last = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => last.once('connect', resolve).once('error', reject));
  last.end();
  const conn = String(connections + 1);
  await d.waitFor((l) => l.msg === 'connection closed' && l.conn === conn, 'the last connection closed');
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  // The receiver reads again: the gap is reported, in syslog too (mail × 8 + warning = 20).
  process.kill(child.pid, 'SIGCONT');
  const gap = await received.waitFor(/log lines were dropped: syslog/);
  assert.match(
    gap,
    new RegExp(
      `${RFC3164(20, d.child.pid)}log lines were dropped: syslog did not take them fast enough dropped=\\d+$`,
    ),
  );
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
