/**
 * The milterd binary as a child process: help, version, usage errors, config errors with file/line/field,
 * check-config output and precedence (cli > env > file > default), serve start/stop and listen failures.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Daemon, runMilterd } from './helpers.js';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('--help lists the commands and the exit codes', async () => {
  const r = await runMilterd(['--help']);
  assert.equal(r.code, 0);
  for (const word of [
    'serve',
    'check-config',
    'test',
    'inspect',
    'Exit codes:',
    '3  invalid configuration',
  ]) {
    assert.ok(r.stdout.includes(word), `help mentions ${word}`);
  }
});

test('serve --help explains every option with its default and environment variable', async () => {
  const r = await runMilterd(['serve', '--help']);
  assert.equal(r.code, 0);
  const text = r.stdout.replace(/\s+/g, ' ');
  for (const [flag, env, def] of [
    ['--listen', 'MILTERD_LISTEN', 'inet:8890@127.0.0.1'],
    ['--socket-mode', 'MILTERD_SOCKET_MODE', 'umask'],
    ['--log-level', 'MILTERD_LOG_LEVEL', 'info'],
    ['--max-connections', 'MILTERD_MAX_CONNECTIONS', '1000'],
    ['--timeout-callback', 'MILTERD_TIMEOUT_CALLBACK', '30s'],
    ['--admin', 'MILTERD_ADMIN', 'off'],
    ['--drain-timeout', 'MILTERD_DRAIN_TIMEOUT', '30s'],
    ['--policy', 'MILTERD_POLICY', 'embedded default policy'],
  ] as const) {
    assert.ok(text.includes(flag), flag);
    assert.ok(text.includes(`env: ${env}`), env);
    assert.ok(text.includes(def), `${flag} default ${def}`);
  }
});

test('--version prints the package version', async () => {
  const r = await runMilterd(['--version']);
  assert.equal(r.code, 0);
  assert.match(r.stdout.trim(), /^\d+\.\d+\.\d+/);
});

test('no command: help on stderr, exit 2', async () => {
  const r = await runMilterd([]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Usage: milterd/);
});

test('unknown option and bad option value: exit 2, one message, no stack trace', async () => {
  for (const args of [
    ['serve', '--bogus'],
    ['serve', '--listen', 'nonsense'],
    ['serve', '--log-level', 'loud'],
    ['frobnicate'],
  ]) {
    const r = await runMilterd(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, /error:/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.equal(r.stdout, '');
  }
});

test('invalid environment value is a usage error naming the variable', async () => {
  const r = await runMilterd(['check-config'], { env: { MILTERD_MAX_CONNECTIONS: 'many' } });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /MILTERD_MAX_CONNECTIONS/);
});

test('check-config reports every problem with file, line and field (exit 3)', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'bad.yaml');
  await writeFile(
    file,
    [
      'listen:',
      '  - inet:8890@127.0.0.1',
      'maxConnections: -4',
      'timeouts:',
      '  idle: soon',
      'colour: blue',
      '',
    ].join('\n'),
  );
  const r = await runMilterd(['check-config', file]);
  assert.equal(r.code, 3);
  assert.equal(r.stdout, '');
  assert.ok(r.stderr.includes(`${file}:3:17: maxConnections:`), r.stderr);
  assert.ok(r.stderr.includes(`${file}:5:9: timeouts.idle:`), r.stderr);
  assert.ok(r.stderr.includes(`${file}:6:1: colour: unknown field`), r.stderr);
  assert.match(r.stderr, /3 problems/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});

test('a config or policy file over 1 MiB is refused before parsing (exit 3, file and size named)', async (t) => {
  const dir = await tempDir(t);
  const big = path.join(dir, 'big.yaml');
  await writeFile(big, `logLevel: info\n# ${'x'.repeat(1024 * 1024)}\n`);
  const r1 = await runMilterd(['check-config', big]);
  assert.equal(r1.code, 3);
  assert.match(
    r1.stderr,
    new RegExp(
      `^${big}: configuration file too large: 1048594 bytes, more than the limit of 1048576 bytes \\(1 MiB\\)`,
      'm',
    ),
  );
  const policy = path.join(dir, 'policy.yaml');
  await writeFile(policy, `version: 1\n# ${'x'.repeat(1024 * 1024)}\n`);
  const cfg = path.join(dir, 'cfg.yaml');
  await writeFile(cfg, 'policy: policy.yaml\n');
  const r2 = await runMilterd(['serve', '--config', cfg, '--listen', 'inet:0@127.0.0.1']);
  assert.equal(r2.code, 3);
  assert.ok(r2.stderr.includes(`${policy}: policy file too large: 1048590 bytes`), r2.stderr);
});

test('check-config: YAML syntax errors and policy errors are located too', async (t) => {
  const dir = await tempDir(t);
  const broken = path.join(dir, 'broken.yaml');
  await writeFile(broken, 'listen: [inet:1@127.0.0.1\nlogLevel: info\n');
  const r1 = await runMilterd(['check-config', broken]);
  assert.equal(r1.code, 3);
  assert.ok(r1.stderr.includes(`${broken}:`), r1.stderr);

  const policy = path.join(dir, 'policy.yaml');
  await writeFile(policy, 'version: 1\nrules:\n  - name: x\n    max-messages: lots\n');
  const cfg = path.join(dir, 'cfg.yaml');
  await writeFile(cfg, 'policy: policy.yaml\n');
  const r2 = await runMilterd(['check-config', cfg]);
  assert.equal(r2.code, 3);
  assert.ok(r2.stderr.includes(`${policy}:4:`), r2.stderr);
  assert.match(r2.stderr, /rules\[0\]\.max-messages/);

  const inline = path.join(dir, 'inline.yaml');
  await writeFile(
    inline,
    'logLevel: warn\npolicy:\n  version: 1\n  rules:\n    - name: y\n      max-messages: -1\n',
  );
  const r3 = await runMilterd(['check-config', inline]);
  assert.equal(r3.code, 3);
  assert.ok(r3.stderr.includes(`${inline}:6:`), r3.stderr);
});

test('check-config prints the effective configuration; precedence is cli > env > file > default', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'milterd.yaml');
  await writeFile(
    file,
    [
      'listen: [inet:7001@127.0.0.1, unix:/run/milterd/milterd.sock]',
      'socketMode: "0660"',
      'logLevel: debug',
      'maxConnections: 50',
      'timeouts: { callback: 5s, frame: 3s }',
      'admin: inet:9901@127.0.0.1',
      'policy:',
      '  version: 1',
      '  rules:',
      '    - name: few',
      '      max-messages: 3',
      '',
    ].join('\n'),
  );
  const r = await runMilterd(
    ['check-config', file, '--max-connections', '7', '--max-connections-per-peer', '5'],
    {
      env: {
        MILTERD_LOG_LEVEL: 'warn',
        MILTERD_MAX_CONNECTIONS: '9',
        MILTERD_DRAIN_TIMEOUT: '2m',
        MILTERD_SHARED_READ_BUFFER: 'false',
      },
    },
  );
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    config: Record<string, unknown> & { timeouts: Record<string, string> };
    sources: Record<string, string>;
    policy: { rules: Array<{ name: string }> };
  };
  assert.deepEqual(doc.config.listen, ['inet:7001@127.0.0.1', 'unix:/run/milterd/milterd.sock']);
  assert.equal(doc.config.socketMode, '0660');
  assert.equal(doc.config.maxConnections, 7);
  assert.equal(doc.sources.maxConnections, 'cli');
  assert.equal(doc.config.logLevel, 'warn');
  assert.equal(doc.sources.logLevel, 'env');
  assert.equal(doc.config.drainTimeout, '2m');
  assert.equal(doc.config.admin, 'inet:9901@127.0.0.1');
  assert.equal(doc.sources.admin, 'file');
  assert.equal(doc.config.timeouts.callback, '5s');
  assert.equal(doc.config.backlog, 4096, 'the default backlog');
  assert.equal(doc.sources.backlog, 'default');
  assert.equal(doc.config.sharedReadBuffer, false);
  assert.equal(doc.sources.sharedReadBuffer, 'env');
  assert.equal(doc.config.timeouts.idle, '10m');
  assert.equal(doc.sources['timeouts.idle'], 'default');
  assert.equal(doc.config.timeouts.frame, '3s');
  assert.equal(doc.config.maxConnectionsPerPeer, 5);
  assert.equal(doc.sources.maxConnectionsPerPeer, 'cli');
  assert.deepEqual(
    doc.policy.rules.map((x) => x.name),
    ['few'],
  );

  // The printed configuration is itself a valid config file giving the same settings.
  const again = path.join(dir, 'again.json');
  await writeFile(again, JSON.stringify(doc.config));
  const r2 = await runMilterd(['check-config', again]);
  assert.equal(r2.code, 0, r2.stderr);
  assert.deepEqual((JSON.parse(r2.stdout) as { config: unknown }).config, doc.config);
});

test('serve: starts, logs JSON only on stdout, stops on SIGTERM with exit 0', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--log-level', 'debug']);
  t.after(() => d.kill());
  const { milter } = await d.started();
  assert.match(milter, /^inet:\d+@127\.0\.0\.1$/);
  d.signal('SIGTERM');
  const exit = await d.exited;
  assert.equal(exit.code, 0, JSON.stringify({ exit, lines: d.lines, stderr: d.stderr }));
  assert.ok(d.lines.some((l) => l.msg === 'milterd stopped'));
  assert.deepEqual(d.strayStdout, [], 'nothing but pino writes to stdout');
  assert.equal(d.stderr, '');
});

test('serve: SIGINT stops it too', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  await d.started();
  d.signal('SIGINT');
  assert.equal((await d.exited).code, 0);
});

test('serve: an address in use fails with exit 4 and a fatal log line', async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const port = (blocker.address() as net.AddressInfo).port;
  const r = await runMilterd(['serve', '--listen', `inet:${port}@127.0.0.1`]);
  assert.equal(r.code, 4, r.stdout + r.stderr);
  assert.match(r.stderr, /^milterd: cannot listen: /);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  const fatal = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { level: number; err?: { code?: string } })
    .find((l) => l.level === 60);
  assert.equal(fatal?.err?.code, 'ERR_MILTER_SOCKET_IN_USE');
});

test('serve: an invalid config file exits 3 before listening', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'bad.yaml');
  await writeFile(file, 'logLevel: shouty\n');
  const r = await runMilterd(['serve', '--config', file]);
  assert.equal(r.code, 3);
  assert.ok(r.stderr.includes(`${file}:1:11: logLevel:`), r.stderr);
  assert.equal(r.stdout, '');
});

test('serve --log-pretty writes readable lines', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--log-pretty']);
  t.after(() => d.kill());
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no pretty start line')), 15_000);
    const check = (): void => {
      if (d.strayStdout.some((l) => / INFO {2}milterd started/.test(l))) {
        clearTimeout(timer);
        resolve();
      } else setTimeout(check, 50);
    };
    check();
  });
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
  assert.deepEqual(d.lines, [], 'no JSON lines in pretty mode');
});

test('serve listens on a unix socket with the requested mode', async (t) => {
  const dir = await tempDir(t);
  const sock = path.join(dir, 'milterd.sock');
  // gid 1 (daemon on Debian): any group works when the tests run as root, as in CI.
  const group = process.getuid?.() === 0 ? ['--socket-group', '1'] : [];
  const d = new Daemon(['--listen', `unix:${sock}`, '--socket-mode', '0600', ...group]);
  t.after(() => d.kill());
  const { milter } = await d.started();
  assert.equal(milter, `unix:${sock}`);
  const { stat } = await import('node:fs/promises');
  const st = await stat(sock);
  assert.equal(st.mode & 0o777, 0o600);
  if (group.length > 0) assert.equal(st.gid, 1);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
