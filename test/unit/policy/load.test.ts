import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { loadPolicyFile, parsePolicy } from '../../../src/policy/load.js';
import { DEFAULT_POLICY_YAML, defaultPolicyConfig } from '../../../src/policy/default-policy.js';
import { createShutdownPolicy } from '../../../src/policy/rules.js';
import { MilterConfigError } from '../../../src/errors.js';

// Tests run from dist/test/unit/policy: the repository root is four levels up.
const root = fileURLToPath(new URL('../../../../', import.meta.url));
const fixture = (name: string): string => `${root}fixtures/policy/${name}`;

/** Assert that parsing `yaml` fails with a located MilterConfigError. */
function refused(yaml: string, line: number, field: string, count = 1): void {
  assert.throws(
    () => parsePolicy(yaml, 'test.yaml'),
    (err: unknown) => {
      assert.ok(err instanceof MilterConfigError, `expected MilterConfigError, got ${String(err)}`);
      assert.equal(err.code, 'ERR_MILTER_CONFIG');
      assert.deepEqual(
        { file: err.file, line: err.line, field: err.field },
        { file: 'test.yaml', line, field },
      );
      assert.match(err.message, new RegExp(`^test\\.yaml:${line}:\\d+: `));
      assert.equal(err.column, Number(/^test\.yaml:\d+:(\d+):/.exec(err.message)?.[1]));
      assert.equal(err.problems.length, count, err.message);
      return true;
    },
  );
}

test('full fixture: every key and rule kind', async () => {
  const c = await loadPolicyFile(fixture('full.yaml'));
  assert.equal(c.file, fixture('full.yaml'));
  assert.equal(c.dryRun, false);
  assert.equal(c.hookTimeoutMs, 500);
  assert.equal(c.replyText, 'Closing connection, policy limit reached');
  assert.equal(c.trackBytes, true);
  assert.deepEqual(c.clientPrefix, { ipv4: 32, ipv6: 56 });
  assert.deepEqual(
    c.rules.map((r) => [r.name, r.limit.kind]),
    [
      ['relays-unlimited-but-old', 'max-session-age'],
      ['max-messages', 'max-messages'],
      ['dictionary', 'max-rejected-recipients'],
      ['max-failed-messages', 'max-failed-messages'],
      ['ratio', 'max-failure-ratio'],
      ['max-bytes', 'max-bytes'],
      ['dynamic-helo', 'max-messages'],
      ['max-concurrent-sessions', 'max-concurrent-sessions'],
      ['per-client-rate', 'max-messages-per-client'],
    ],
  );
  const [age, msgs, dict, , ratio, bytes, helo, , rate] = c.rules;
  assert.deepEqual(age?.limit, { kind: 'max-session-age', maxMs: 7_200_000 });
  assert.deepEqual(age?.when?.client, [
    { address: '192.0.2.0', prefix: 24, type: 'ipv4' },
    { address: '2001:db8::', prefix: 32, type: 'ipv6' },
  ]);
  assert.deepEqual(msgs?.when?.notClient, [{ address: '127.0.0.0', prefix: 8, type: 'ipv4' }]);
  assert.equal(dict?.text, 'Too many unknown recipients');
  assert.equal(dict?.when?.authenticated, false);
  assert.deepEqual(ratio?.limit, { kind: 'max-failure-ratio', ratio: 0.8, minAttempts: 10 });
  assert.equal(ratio?.dryRun, true);
  assert.deepEqual(bytes?.limit, { kind: 'max-bytes', max: 50_000_000 });
  assert.equal(helo?.when?.helo, '^\\[?\\d+\\.\\d+\\.\\d+\\.\\d+\\]?$');
  assert.deepEqual(rate?.limit, { kind: 'max-messages-per-client', max: 500, windowMs: 3_600_000 });
  assert.equal(rate?.onStoreError, 'local');
  assert.equal(age?.line, 11);
  // And it compiles.
  assert.equal(createShutdownPolicy(c).list().length, 9);
});

test('scenario fixtures for the end-to-end tests parse', async () => {
  const two = await loadPolicyFile(fixture('max-messages-2.yaml'));
  assert.deepEqual(two.rules[0]?.limit, { kind: 'max-messages', max: 2 });
  const rcpt = await loadPolicyFile(fixture('max-rejected-recipients-3.yaml'));
  assert.deepEqual(rcpt.rules[0]?.limit, { kind: 'max-rejected-recipients', max: 3 });
  const dry = await loadPolicyFile(fixture('dry-run.yaml'));
  assert.equal(dry.dryRun, true);
});

test('invalid fixture: unknown key refused with file, line and field', async () => {
  await assert.rejects(loadPolicyFile(fixture('invalid-unknown-key.yaml')), (err: unknown) => {
    assert.ok(err instanceof MilterConfigError);
    assert.equal(err.file, fixture('invalid-unknown-key.yaml'));
    assert.equal(err.line, 4);
    assert.equal(err.field, 'rules[0].max-mesages');
    return true;
  });
});

test('missing file: MilterConfigError naming the file', async () => {
  await assert.rejects(loadPolicyFile(fixture('does-not-exist.yaml')), (err: unknown) => {
    assert.ok(err instanceof MilterConfigError);
    assert.equal(err.file, fixture('does-not-exist.yaml'));
    return true;
  });
});

test('empty document: a policy without rules', () => {
  assert.deepEqual(parsePolicy('', 'e.yaml'), { file: 'e.yaml', dryRun: false, rules: [] });
  assert.deepEqual(parsePolicy('# nothing\n', 'e.yaml').rules, []);
  assert.deepEqual(parsePolicy('rules:\n', 'e.yaml').rules, []);
});

const invalid: Array<[title: string, yaml: string, line: number, field: string, count?: number]> = [
  // Every syntax error is reported: the flow list's content, and its missing end.
  ['YAML syntax', 'version: 1\nrules: [\n  - max-messages: 2\n', 3, '', 2],
  ['duplicate key', 'version: 1\nversion: 1\n', 2, ''],
  ['unknown top-level key', 'version: 1\ndryrun: true\n', 2, 'dryrun'],
  ['wrong version', 'version: 2\n', 1, 'version'],
  ['top level not a mapping', '- a\n- b\n', 1, ''],
  ['dry-run not a boolean (yes is a string in YAML 1.2)', 'dry-run: yes\n', 1, 'dry-run'],
  ['bad hook-timeout', 'hook-timeout: soon\n', 1, 'hook-timeout'],
  ['multi-line reply-text', 'reply-text: "a\\nb"\n', 1, 'reply-text'],
  ['rules not a list', 'rules:\n  max-messages: 2\n', 2, 'rules'],
  ['rule not a mapping', 'rules:\n  - 5\n', 2, 'rules[0]'],
  ['rule without limit', 'rules:\n  - name: x\n', 2, 'rules[0]'],
  ['rule with two limits', 'rules:\n  - max-messages: 2\n    max-bytes: 10\n', 3, 'rules[0]'],
  [
    'unknown rule key',
    'rules:\n  - max-messages: 2\n  - max-bytes: 1MB\n    colour: red\n',
    4,
    'rules[1].colour',
  ],
  ['max-messages 0', 'rules:\n  - max-messages: 0\n', 2, 'rules[0].max-messages'],
  ['max-messages not an integer', 'rules:\n  - max-messages: 2.5\n', 2, 'rules[0].max-messages'],
  ['max-messages a string', 'rules:\n  - max-messages: "many"\n', 2, 'rules[0].max-messages'],
  [
    'negative rejected recipients',
    'rules:\n  - max-rejected-recipients: -1\n',
    2,
    'rules[0].max-rejected-recipients',
  ],
  ['bad size', 'rules:\n  - max-bytes: 10 parsecs\n', 2, 'rules[0].max-bytes'],
  ['zero size', 'rules:\n  - max-bytes: 0\n', 2, 'rules[0].max-bytes'],
  ['bad duration', 'rules:\n  - max-session-age: 1 hour\n', 2, 'rules[0].max-session-age'],
  ['ratio out of range', 'rules:\n  - max-failure-ratio: 1.5\n', 2, 'rules[0].max-failure-ratio'],
  [
    'min-attempts with another kind',
    'rules:\n  - max-messages: 2\n    min-attempts: 3\n',
    3,
    'rules[0].min-attempts',
  ],
  ['window with another kind', 'rules:\n  - max-messages: 2\n    window: 1h\n', 3, 'rules[0].window'],
  ['bad window', 'rules:\n  - max-messages-per-client: 5\n    window: never\n', 3, 'rules[0].window'],
  ['when not a mapping', 'rules:\n  - max-messages: 2\n    when: always\n', 3, 'rules[0].when'],
  [
    'unknown condition',
    'rules:\n  - max-messages: 2\n    when:\n      country: FR\n',
    4,
    'rules[0].when.country',
  ],
  [
    'bad CIDR in a list',
    'rules:\n  - max-messages: 2\n    when:\n      client:\n        - 10.0.0.0/8\n        - 10.0.0.0/33\n',
    6,
    'rules[0].when.client[1]',
  ],
  [
    'bad CIDR alone',
    'rules:\n  - max-messages: 2\n    when:\n      not-client: nowhere\n',
    4,
    'rules[0].when.not-client',
  ],
  [
    'empty CIDR list',
    'rules:\n  - max-messages: 2\n    when:\n      client: []\n',
    4,
    'rules[0].when.client',
  ],
  [
    'authenticated not boolean',
    'rules:\n  - max-messages: 2\n    when:\n      authenticated: 1\n',
    4,
    'rules[0].when.authenticated',
  ],
  ['bad regex', 'rules:\n  - max-messages: 2\n    when:\n      helo: "("\n', 4, 'rules[0].when.helo'],
  [
    'regex with a backreference',
    "rules:\n  - max-messages: 2\n    when:\n      helo: '^(\\w+)\\.\\1$'\n",
    4,
    'rules[0].when.helo',
  ],
  [
    'duplicate explicit names',
    'rules:\n  - name: a\n    max-messages: 2\n  - name: a\n    max-bytes: 1\n',
    4,
    'rules[1].name',
  ],
  ['empty text', 'rules:\n  - max-messages: 2\n    text: ""\n', 3, 'rules[0].text'],
];

for (const [title, yaml, line, field, count] of invalid) {
  test(`refused: ${title} (line ${line}, field ${field || '(top level)'})`, () =>
    refused(yaml, line, field, count));
}

test('helo patterns that cannot be matched in linear time are refused at load, naming the construct', () => {
  const cases: Array<[string, RegExp]> = [
    [
      '^(\\w+)\\.\\1$',
      /rules\[0\]\.when\.helo: invalid regular expression: backreference \\1 is not supported/,
    ],
    ['^mail(?=\\.)', /lookahead \(\?=\.\.\.\) is not supported/],
    ['(?<!x)mx', /lookbehind \(\?<!\.\.\.\) is not supported/],
    ['(a{100}){100}', /pattern too large/],
  ];
  for (const [pattern, message] of cases) {
    const yaml = `rules:\n  - max-messages: 2\n    when:\n      helo: '${pattern}'\n`;
    assert.throws(
      () => parsePolicy(yaml, 'p.yaml'),
      (err: unknown) =>
        err instanceof MilterConfigError &&
        err.line === 4 &&
        err.field === 'rules[0].when.helo' &&
        /^p\.yaml:4:\d+: /.test(err.message) &&
        message.test(err.message),
      pattern,
    );
  }
});

test('two rules of one kind without names get distinct names', () => {
  const c = parsePolicy(
    'rules:\n  - max-messages: 2\n  - max-messages: 5\n    when:\n      authenticated: true\n',
  );
  assert.deepEqual(
    c.rules.map((r) => r.name),
    ['max-messages', 'max-messages-2'],
  );
  assert.deepEqual(createShutdownPolicy(c).list(), ['max-messages', 'max-messages-2']);
});

test('aliases are resolved', () => {
  const yaml =
    'rules:\n  - max-messages: 2\n    when:\n      client: &n [10.0.0.0/8]\n  - max-bytes: 5\n    when:\n      client: *n\n';
  const c = parsePolicy(yaml);
  assert.deepEqual(c.rules[1]?.when?.client, [{ address: '10.0.0.0', prefix: 8, type: 'ipv4' }]);
});

test('embedded default policy: parses, documented defaults', () => {
  const c = defaultPolicyConfig();
  assert.deepEqual(
    c.rules.map((r) => r.limit),
    [
      { kind: 'max-messages', max: 100 },
      { kind: 'max-rejected-recipients', max: 10 },
      { kind: 'max-session-age', maxMs: 3_600_000 },
    ],
  );
  assert.equal(c.dryRun, false);
  assert.equal(c.hookTimeoutMs, 1000);
  assert.notEqual(defaultPolicyConfig(), c, 'a fresh copy each time');
});

test('docs/policy.md shows the embedded default policy verbatim', async () => {
  const doc = await readFile(`${root}docs/policy.md`, 'utf8');
  const m = /<!-- default-policy:start -->\n```yaml\n([\s\S]*?)```\n<!-- default-policy:end -->/.exec(doc);
  assert.ok(m, 'docs/policy.md has the default-policy block');
  assert.equal(m[1], DEFAULT_POLICY_YAML);
});
