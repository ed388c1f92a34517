/**
 * Bounded YAML work (yaml-file.ts) for the policy and the config file: the size limit, the linear
 * duplicate-key check, the nesting limit. The expensive cases run in a child process killed after a
 * generous deadline: on the old code they take minutes (the quadratic duplicate-key check) or abort the
 * process (a V8 fatal error after the parser's stack overflows), and a test must fail, not hang or die.
 * The deadline is a hang guard, not a performance assertion.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadPolicyFile, parsePolicy } from '../../../src/policy/load.js';
import { readConfigFile } from '../../../src/cli/config.js';
import { MilterConfigError } from '../../../src/errors.js';

/** The documented limit (MAX_YAML_FILE_BYTES); spelled out so that this file also runs on older code. */
const MAX_YAML_FILE_BYTES = 1024 * 1024;

const dist = new URL('../../../', import.meta.url).href;

/** Run an ES module script in a child Node process; killed after 60 s. */
function runChild(
  script: string,
): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', script],
      { timeout: 60_000, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const e = error as (Error & { code?: number; signal?: string }) | null;
        resolve({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, out: stdout, err: stderr });
      },
    );
  });
}

test('a policy over 1 MiB is refused before parsing, with the file and its size', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-yaml-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'policy.yaml');
  // A valid policy padded with comments: only the size is wrong.
  const head = 'version: 1\nrules: []\n';
  await writeFile(file, head + '#'.repeat(MAX_YAML_FILE_BYTES + 1 - head.length - 1) + '\n');
  await assert.rejects(loadPolicyFile(file), (err: unknown) => {
    assert.ok(err instanceof MilterConfigError, String(err));
    assert.equal(err.file, file);
    assert.equal(
      err.message,
      `${file}: policy file too large: 1048577 bytes, more than the limit of 1048576 bytes (1 MiB)`,
    );
    return true;
  });
  // The same text given directly (inline policies, the library API) is refused too.
  assert.throws(
    () => parsePolicy(head + '#'.repeat(MAX_YAML_FILE_BYTES) + '\n', 'inline.yaml'),
    /^MilterConfigError: inline\.yaml: policy file too large/,
  );
  // Exactly at the limit is fine.
  await writeFile(file, head + '#'.repeat(MAX_YAML_FILE_BYTES - head.length - 1) + '\n');
  assert.deepEqual((await loadPolicyFile(file)).rules, []);
});

test('a config file over 1 MiB is one located problem, reported before parsing', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-yaml-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'milterd.yaml');
  await writeFile(file, 'logLevel: info\n' + `# ${'x'.repeat(MAX_YAML_FILE_BYTES)}\n`);
  const r = await readConfigFile(file);
  assert.equal(r.problems.length, 1);
  assert.equal(r.problems[0]?.file, file);
  assert.match(
    r.problems[0]?.message ?? '',
    /^configuration file too large: \d+ bytes, more than the limit of 1048576 bytes/,
  );
  assert.deepEqual(r.values, {});
});

test('200 000 keys (just under 1 MiB): the duplicate-key check is linear and the file is refused at its duplicate', async () => {
  const { code, signal, out, err } = await runChild(`
    import { parsePolicy } from '${dist}src/policy/load.js';
    import { parseConfigText } from '${dist}src/cli/config.js';
    import { manyKeysYaml } from '${dist}test/helpers/big-yaml.js';
    const { text, duplicateLine } = manyKeysYaml(200000);
    const out = { bytes: Buffer.byteLength(text), duplicateLine };
    try { parsePolicy(text, 'p.yaml'); } catch (e) { out.policy = e.message; }
    const r = parseConfigText(text, 'c.yaml');
    out.config = r.problems.map((p) => [p.line, p.message]).slice(0, 3);
    process.stdout.write(JSON.stringify(out));
  `);
  assert.equal(signal, null, `killed by ${String(signal)}: still parsing at the deadline (quadratic check?)`);
  assert.equal(code, 0, err);
  const result = JSON.parse(out) as {
    bytes: number;
    duplicateLine: number;
    policy: string;
    config: Array<[number, string]>;
  };
  assert.ok(result.bytes <= MAX_YAML_FILE_BYTES);
  assert.equal(result.duplicateLine, 20001);
  assert.equal(result.policy, 'p.yaml:20001:1: YAML syntax error: Map keys must be unique');
  assert.deepEqual(result.config, [[20001, 'YAML syntax error: Map keys must be unique']]);
});

test('deeply nested documents, parsed again and again, are refused and never abort the process', async () => {
  const { code, signal, out, err } = await runChild(`
    import { parsePolicy } from '${dist}src/policy/load.js';
    import { parseConfigText } from '${dist}src/cli/config.js';
    import { deepYaml } from '${dist}test/helpers/big-yaml.js';
    const seen = [];
    for (let round = 0; round < 3; round++) {
      for (const depth of [2000, 5000, 20000]) {
        for (const text of deepYaml(depth)) {
          try { parsePolicy(text, 'p.yaml'); seen.push('accepted'); } catch (e) { seen.push(e.message); }
          seen.push(parseConfigText(text, 'c.yaml').problems[0]?.message);
        }
      }
    }
    process.stdout.write(JSON.stringify(seen));
  `);
  assert.equal(signal, null, `killed by ${String(signal)}`);
  assert.equal(code, 0, `the process died: ${err.slice(0, 300)}`);
  const seen = JSON.parse(out) as string[];
  assert.equal(seen.length, 3 * 3 * 3 * 2);
  for (const message of seen) assert.match(message, /nested deeper than 64 levels/);
});
