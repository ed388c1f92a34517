/**
 * `milterd check-config` (and `serve`) report every problem of the config file and of the policy in one
 * run: sorted by position, located as FILE:LINE:COLUMN, with "did you mean" for misspelt keys.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { LIMIT_KINDS } from '../../src/policy/rules.js';
import { runMilterd } from './helpers.js';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-check-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const CONFIG = [
  'listen:',
  '  - inet:8890@127.0.0.1',
  'maxConection: 10',
  'logLevel: loud',
  'timeouts:',
  '  idel: 5s',
  '  frame: soon',
  'colour: blue',
  'policy: policy.yaml',
  '',
].join('\n');

const POLICY = [
  'version: 1',
  'dryrun: true',
  'rules:',
  '  - name: a',
  '    max-mesages: 5',
  '  - max-bytes: lots',
  '    when:',
  '      client: 10.0.0.0/33',
  '  - max-messages: 0',
  '',
].join('\n');

test('check-config lists every problem of the config file, then of its policy file, in file order', async (t) => {
  const dir = await tempDir(t);
  const cfg = path.join(dir, 'milterd.yaml');
  const pol = path.join(dir, 'policy.yaml');
  await writeFile(cfg, CONFIG);
  await writeFile(pol, POLICY);
  const r = await runMilterd(['check-config', cfg]);
  assert.equal(r.code, 3);
  assert.equal(r.stdout, '');
  assert.deepEqual(r.stderr.split('\n'), [
    `${cfg}:3:1: maxConection: unknown field (did you mean "maxConnections"?)`,
    `${cfg}:4:11: logLevel: expected one of fatal, error, warn, info, debug, trace, silent`,
    `${cfg}:6:3: timeouts.idel: unknown field (did you mean "idle"?)`,
    `${cfg}:7:10: timeouts.frame: expected a duration such as 500ms, 30s, 5m, 1h (a bare number is seconds)`,
    `${cfg}:8:1: colour: unknown field`,
    `${pol}:2:1: dryrun: unknown key "dryrun" (did you mean "dry-run"?)`,
    `${pol}:4:5: rules[0]: a rule needs exactly one limit, one of: ${LIMIT_KINDS.join(', ')}`,
    `${pol}:5:5: rules[0].max-mesages: unknown key "max-mesages" (did you mean "max-messages"?)`,
    `${pol}:6:16: rules[1].max-bytes: expected a size such as 10MB, 512KiB or a number of bytes`,
    `${pol}:8:15: rules[1].when.client: "10.0.0.0/33": prefix length must be 0..32`,
    `${pol}:9:19: rules[2].max-messages: expected a whole number >= 1`,
    'configuration invalid: 11 problems',
    '',
  ]);
});

test('serve refuses to start with the same full list (exit 3), before listening', async (t) => {
  const dir = await tempDir(t);
  const cfg = path.join(dir, 'milterd.yaml');
  await writeFile(cfg, CONFIG);
  await writeFile(path.join(dir, 'policy.yaml'), POLICY);
  const check = await runMilterd(['check-config', cfg]);
  const serve = await runMilterd(['serve', '--config', cfg, '--listen', 'inet:0@127.0.0.1']);
  assert.equal(serve.code, 3);
  assert.equal(serve.stdout, '');
  const problems = check.stderr.split('\n').slice(0, 11);
  assert.deepEqual(serve.stderr.split('\n'), [
    `milterd: ${problems[0]}`,
    ...problems.slice(1),
    'milterd: configuration invalid: 11 problems',
    '',
  ]);
});

test("an inline policy: its problems are merged with the config file's by line", async (t) => {
  const dir = await tempDir(t);
  const cfg = path.join(dir, 'milterd.yaml');
  await writeFile(
    cfg,
    [
      'logLevle: info',
      'policy:',
      '  version: 1',
      '  rules:',
      '    - max-messages: many',
      'backlog: 0',
      '  ',
    ].join('\n'),
  );
  const r = await runMilterd(['check-config', cfg]);
  assert.equal(r.code, 3);
  assert.deepEqual(r.stderr.split('\n'), [
    `${cfg}:1:1: logLevle: unknown field (did you mean "logLevel"?)`,
    `${cfg}:5:21: rules[0].max-messages: expected a whole number >= 1`,
    `${cfg}:6:10: backlog: expected a whole number >= 1`,
    'configuration invalid: 3 problems',
    '',
  ]);
});

test('YAML syntax errors: every one, with its line and column; the policy file is still checked', async (t) => {
  const dir = await tempDir(t);
  const pol = path.join(dir, 'policy.yaml');
  await writeFile(pol, 'version: 1\nrules: [\n  - max-messages: 2\n');
  const cfg = path.join(dir, 'milterd.yaml');
  await writeFile(cfg, 'logLevel: info\nlogLevel: warn\nbacklog: 5\n');
  const r = await runMilterd(['check-config', cfg, '--policy', pol]);
  assert.equal(r.code, 3);
  assert.deepEqual(r.stderr.split('\n'), [
    `${cfg}:2:1: YAML syntax error: Map keys must be unique`,
    `${pol}:3:3: YAML syntax error: Block collections are not allowed within flow collections`,
    `${pol}:4:1: YAML syntax error: Flow sequence in block collection must be sufficiently indented and end with a ]`,
    'configuration invalid: 3 problems',
    '',
  ]);
});
