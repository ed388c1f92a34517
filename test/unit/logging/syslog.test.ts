/**
 * The pure parts of the syslog output: target specs, PRI from facility and pino level, one line per
 * message, and the `logger` arguments.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { syslogText } from '../../../src/cli/log-output.js';
import {
  formatSyslogTarget,
  loggerArgs,
  parseSyslogTarget,
  syslogPri,
  syslogSeverity,
  toSyslogLine,
} from '../../../src/logging/syslog.js';

test('targets: unix:/path or /path, udp:HOST:PORT, udp:[IPv6]:PORT; anything else is refused', () => {
  assert.deepEqual(parseSyslogTarget('unix:/dev/log'), { kind: 'unix', path: '/dev/log' });
  assert.deepEqual(parseSyslogTarget('/run/systemd/journal/syslog'), {
    kind: 'unix',
    path: '/run/systemd/journal/syslog',
  });
  assert.deepEqual(parseSyslogTarget('udp:127.0.0.1:514'), { kind: 'udp', host: '127.0.0.1', port: 514 });
  assert.deepEqual(parseSyslogTarget('udp:[::1]:1514'), { kind: 'udp', host: '::1', port: 1514 });
  assert.equal(formatSyslogTarget(parseSyslogTarget('udp:[::1]:1514')), 'udp:[::1]:1514');
  assert.equal(formatSyslogTarget(parseSyslogTarget('/dev/log')), 'unix:/dev/log');
  for (const bad of [
    'unix:dev/log',
    'udp:host',
    'udp:host:0',
    'udp:host:70000',
    'tcp:h:1',
    'udp:[nope]:5',
    '',
  ]) {
    assert.throws(() => parseSyslogTarget(bad), /expected|not an IPv6/, bad);
  }
});

test('PRI = facility × 8 + severity; pino levels map to crit, err, warning, info, debug', () => {
  assert.deepEqual([60, 50, 40, 30, 20, 10].map(syslogSeverity), [2, 3, 4, 6, 7, 7]);
  assert.equal(syslogPri('mail', 30), 22);
  assert.equal(syslogPri('local7', 60), 186);
  assert.equal(syslogPri('kern', 20), 7);
});

test('one message per line: the pretty text without time and level, control characters as spaces', () => {
  const line = JSON.stringify({
    level: 50,
    time: 1,
    pid: 9,
    hostname: 'h',
    name: 'milterd',
    conn: '7',
    peer: '192.0.2.1:25',
    msg: 'filter failed\nbadly',
    err: { message: 'boom', code: 'ERR_X', stack: 'Error: boom\n    at f' },
  });
  assert.equal(
    toSyslogLine(line + '\n', 'mail', syslogText),
    '<19>[conn=7 peer=192.0.2.1:25] filter failed badly err=boom code=ERR_X\n',
  );
  assert.equal(toSyslogLine('not json\n', 'daemon', syslogText), '<30>not json\n');
});

test('logger arguments: socket or UDP server, format, pid in the tag, 8 KiB messages', () => {
  assert.deepEqual(loggerArgs({ kind: 'unix', path: '/dev/log' }, 'rfc3164', 42), [
    '--socket=/dev/log',
    '--rfc3164',
    '--socket-errors=on',
    '--prio-prefix',
    '--size=8192',
    '--tag=milterd',
    '--id=42',
  ]);
  assert.deepEqual(loggerArgs({ kind: 'udp', host: '::1', port: 514 }, 'rfc5424', 42).slice(0, 4), [
    '--udp',
    '--server=::1',
    '--port=514',
    '--rfc5424',
  ]);
});
