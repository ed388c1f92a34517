import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineCounter, parseDocument } from 'yaml';
import { parsePolicy } from '../../../src/policy/load.js';
import { parseConfigText } from '../../../src/cli/config.js';
import { MAX_YAML_DEPTH, parseYamlDocument } from '../../../src/policy/yaml-file.js';
import { deepYaml } from '../../helpers/big-yaml.js';

test('duplicate keys: found at every level, located like the yaml package does, scalars compared by value', () => {
  const docs = [
    'a: 1\nb: 2\na: 3\n',
    'x:\n  y: 1\n  z: 2\n  y: 3\nw: [ {p: 1, p: 2} ]\n',
    '"1": a\n1: b\n1: c\n', // the string "1" and the number 1 are different keys
    'list:\n  - k: 1\n    k: 2\n  - k: 1\n',
    '? [a, b]\n: 1\n? [a, b]\n: 2\n', // complex keys are compared by identity, as in yaml
    'a: &x {q: 1}\nb: *x\nq: 1\n',
  ];
  for (const text of docs) {
    const mine = parseYamlDocument(text, new LineCounter());
    const theirs = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
    const positions = (errors: ReadonlyArray<{ code: string; pos: [number, number] }>): number[] =>
      errors.filter((e) => e.code === 'DUPLICATE_KEY').map((e) => e.pos[0]);
    assert.deepEqual(positions(mine.errors), positions(theirs.errors), text);
    assert.deepEqual(mine.toJS(), theirs.toJS(), text);
  }
  assert.throws(
    () => parsePolicy('version: 1\nrules: []\nversion: 1\n', 'p.yaml'),
    /^MilterConfigError: p\.yaml:3:1: YAML syntax error: Map keys must be unique/,
  );
});

test(`nesting deeper than ${MAX_YAML_DEPTH} levels is refused before composing; ${MAX_YAML_DEPTH} levels are fine`, () => {
  for (const text of deepYaml(MAX_YAML_DEPTH + 1)) {
    const doc = parseYamlDocument(text, new LineCounter());
    assert.equal(doc.errors[0]?.code, 'RESOURCE_EXHAUSTION', text.slice(0, 20));
    assert.match(doc.errors[0]?.message ?? '', /nested deeper than 64 levels/);
  }
  for (const text of deepYaml(MAX_YAML_DEPTH)) {
    const doc = parseYamlDocument(text, new LineCounter());
    assert.deepEqual(
      doc.errors.filter((e) => e.code === 'RESOURCE_EXHAUSTION'),
      [],
    );
  }
  const r = parseConfigText('listen: ' + '['.repeat(100) + '\n', 'c.yaml');
  assert.equal(r.problems.length >= 1, true);
  assert.match(r.problems[0]?.message ?? '', /nested deeper than 64 levels/);
  assert.equal(r.problems[0]?.line, 1);
});
