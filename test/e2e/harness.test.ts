// Fast checks of the e2e harness itself (no MTA needed): scenario files, parsing, strace reading.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { contentBytes, loadScenarios, parseScenario } from './harness/scenario.js';
import { parseMessage } from './harness/sink.js';
import { dotStuff } from './harness/smtp-client.js';
import { contactedAddresses, isLoopback } from './harness/strace.js';

test('every scenario file parses, and each is run on at least one MTA', async () => {
  const scenarios = await loadScenarios();
  assert.ok(scenarios.length >= 30, `only ${scenarios.length} scenarios found`);
  for (const s of scenarios) {
    assert.ok(!(s.notApplicable?.postfix && s.notApplicable.sendmail), `${s.file} applies to no MTA`);
  }
});

test('scenario parser names unknown keys and bad values', () => {
  const ok = 'name: x\nsessions: [{ steps: [] }]\nexpect: { both: {} }\n';
  assert.equal(parseScenario('ok.yaml', ok).name, 'x');
  assert.throws(() => parseScenario('a.yaml', ok + 'extra: 1\n'), /a\.yaml: top level: unknown key "extra"/);
  assert.throws(
    () => parseScenario('b.yaml', ok + 'filter: { rules: [{ at: nowhere, decision: reject }] }\n'),
    /b\.yaml: filter\.rules\[0\]\.at must be one of/,
  );
  assert.throws(
    () => parseScenario('c.yaml', 'name: x\nsessions: [{ steps: [{ send: A, raw: B }] }]\nexpect: {}\n'),
    /needs exactly one of/,
  );
});

test('generated content is whole repeats, CRLF line ends', () => {
  assert.equal(contentBytes('a\nb\n').toString(), 'a\r\nb\r\n');
  const big = contentBytes({ repeat: 'xy\n', bytes: 10 });
  assert.equal(big.toString(), 'xy\r\n'.repeat(3));
});

test('sink message parsing unfolds headers and keeps the body', () => {
  const { headers, body } = parseMessage(Buffer.from('A: 1\r\nB: two\r\n\tlines\r\nA: 3\r\n\r\nbody\r\n'));
  assert.deepEqual(headers, [
    { name: 'A', value: '1' },
    { name: 'B', value: 'two\tlines' },
    { name: 'A', value: '3' },
  ]);
  assert.equal(body.toString(), 'body\r\n');
  assert.equal(dotStuff(Buffer.from('.a\r\nb\r\n.')).toString(), '..a\r\nb\r\n..\r\n');
});

test('strace reading finds every IPv4/IPv6 address contacted', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-strace-'));
  try {
    const file = path.join(dir, 's.txt');
    await writeFile(
      file,
      [
        '12 connect(5, {sa_family=AF_INET, sin_port=htons(25), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '13 sendto(6, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = 1',
        '14 connect(7, {sa_family=AF_UNIX, sun_path="/dev/log"}, 110) = 0',
      ].join('\n'),
    );
    const contacts = await contactedAddresses([file]);
    assert.deepEqual(
      contacts.map((c) => c.address),
      ['127.0.0.1', '2001:db8::1'],
    );
    assert.deepEqual(
      contacts.map((c) => isLoopback(c.address)),
      [true, false],
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('scenario parser checks the policy section: unknown keys, file xor inline, inline errors at their real line', () => {
  const base = 'name: x\nsessions: [{ steps: [] }]\nexpect: { both: {} }\n';
  assert.throws(
    () => parseScenario('p1.yaml', base + 'policy: { fil: max-messages-2.yaml }\n'),
    /p1\.yaml.*fil/,
  );
  assert.throws(
    () =>
      parseScenario(
        'p2.yaml',
        base + 'policy:\n  file: max-messages-2.yaml\n  inline: { rules: [{ max-messages: 2 }] }\n',
      ),
    /p2\.yaml/,
  );
  // The bad key sits on line 7 of the scenario file: the error must say so.
  const inline = base + 'policy:\n  inline:\n    rules:\n      - max-mesages: 2\n';
  assert.throws(() => parseScenario('p3.yaml', inline), /p3\.yaml \(policy\.inline\):7:\d+: rules\[0\]/);
});
