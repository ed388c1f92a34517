/**
 * checkPolicy reports every problem of a policy document (not just the first), sorted by position and
 * located by line and column; parsePolicy throws them as one MilterConfigError. didYouMean's hints.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MilterConfigError } from '../../../src/errors.js';
import { checkPolicy, parsePolicy } from '../../../src/policy/load.js';
import { didYouMean, editDistance } from '../../../src/policy/yaml-file.js';

const YAML = [
  'version: 2',
  'hook-timeout: soon',
  'client-prefix:',
  '  ipv4: 33',
  '  ipv5: 24',
  'rules:',
  '  - max-messages: 2',
  '    window: 1h',
  '  - max-bytes: 1MiB',
  '    dry_run: true',
  '    when:',
  '      helo: "("',
  '      authenticated: maybe',
  '',
].join('\n');

test('checkPolicy: every problem, in file order, with line and column', () => {
  const { problems } = checkPolicy(YAML, 'p.yaml');
  assert.deepEqual(
    problems.map((p) => [p.line, p.column, p.field, p.message]),
    [
      [1, 10, 'version', 'p.yaml:1:10: version: only version 1 is supported'],
      [2, 15, 'hook-timeout', `p.yaml:2:15: hook-timeout: ${problems[1]?.message.split(': ').pop()}`],
      [4, 9, 'client-prefix.ipv4', 'p.yaml:4:9: client-prefix.ipv4: expected a prefix length 0..32'],
      [
        5,
        3,
        'client-prefix.ipv5',
        'p.yaml:5:3: client-prefix.ipv5: unknown key "ipv5" (did you mean "ipv4"?)',
      ],
      [8, 5, 'rules[0].window', 'p.yaml:8:5: rules[0].window: only allowed with max-messages-per-client'],
      [
        10,
        5,
        'rules[1].dry_run',
        'p.yaml:10:5: rules[1].dry_run: unknown key "dry_run" (did you mean "dry-run"?)',
      ],
      [12, 13, 'rules[1].when.helo', problems[6]?.message],
      [
        13,
        22,
        'rules[1].when.authenticated',
        'p.yaml:13:22: rules[1].when.authenticated: expected true or false',
      ],
    ],
  );
  assert.match(problems[1]?.message ?? '', /^p\.yaml:2:15: hook-timeout: .*duration/);
  assert.match(
    problems[6]?.message ?? '',
    /^p\.yaml:12:13: rules\[1\]\.when\.helo: invalid regular expression/,
  );
});

test('parsePolicy throws all of them as one MilterConfigError located at the first', () => {
  assert.throws(
    () => parsePolicy(YAML, 'p.yaml'),
    (err: unknown) => {
      assert.ok(err instanceof MilterConfigError);
      assert.deepEqual([err.line, err.column, err.field], [1, 10, 'version']);
      assert.equal(err.problems.length, 8);
      assert.deepEqual(
        err.message.split('\n'),
        err.problems.map((p) => p.message),
      );
      return true;
    },
  );
});

test('a valid policy has no problems and gives the same config as parsePolicy', () => {
  const text = 'version: 1\nrules:\n  - name: a\n    max-messages: 3\n  - max-bytes: 1MiB\n';
  const { config, problems } = checkPolicy(text, 'ok.yaml');
  assert.deepEqual(problems, []);
  assert.deepEqual(config, parsePolicy(text, 'ok.yaml'));
});

test('didYouMean: case, - and _ ignored; else the closest within a quarter of the length', () => {
  assert.equal(editDistance('kitten', 'sitting'), 3);
  assert.equal(editDistance('ab', 'ba'), 1);
  const keys = ['maxConnections', 'maxConnectionsPerPeer', 'logLevel', 'dry-run', 'idle'];
  assert.equal(didYouMean('max_connections', keys), 'maxConnections');
  assert.equal(didYouMean('dryrun', keys), 'dry-run');
  assert.equal(didYouMean('maxConection', keys), 'maxConnections');
  assert.equal(didYouMean('loglevle', keys), 'logLevel');
  assert.equal(didYouMean('idel', keys), 'idle');
  assert.equal(didYouMean('colour', keys), undefined);
  assert.equal(didYouMean('x', keys), undefined);
});
