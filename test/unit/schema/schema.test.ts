/**
 * The JSON Schemas in schema/ (published for editors: yaml-language-server) against the loaders' own
 * tables: a key added to the settings table or to the policy loader and not to the schema fails here.
 * Every example config and policy validates; wrong files are refused by the schema and by the loader.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { parse } from 'yaml';
import { parseConfigText, settingsToConfigObject } from '../../../src/cli/config.js';
import { defaultSettings, SETTING_KEYS, SETTINGS } from '../../../src/cli/options.js';
import { FAILURE_DECISIONS, LOG_LEVELS } from '../../../src/cli/values.js';
import {
  BUILTIN_MEMBERS,
  MEMBER_BREAKER_KEYS,
  MEMBER_KEYS,
  MEMBER_TIMEOUT_KEYS,
  ON_FAILURE_ACTIONS,
} from '../../../src/cli/pipeline-config.js';
import { SYSLOG_FACILITIES, SYSLOG_FORMATS } from '../../../src/logging/syslog.js';
import { DEFAULT_POLICY_YAML } from '../../../src/policy/default-policy.js';
import { MEMBER_CONDITION_KEYS } from '../../../src/pipeline/index.js';
import { checkPolicy, PREFIX_KEYS, RULE_KEYS, TOP_KEYS, WHEN_KEYS } from '../../../src/policy/load.js';
import { LIMIT_KINDS } from '../../../src/policy/rules.js';

// Tests run from dist/test/unit/schema: the repository root is four levels up.
const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

interface SchemaNode {
  properties?: Record<string, SchemaNode>;
  $defs?: Record<string, SchemaNode>;
  oneOf?: Array<{ required?: string[] }>;
  enum?: unknown[];
  [key: string]: unknown;
}

const configSchema = JSON.parse(
  await readFile(`${ROOT}schema/milterd-config.schema.json`, 'utf8'),
) as SchemaNode;
const policySchema = JSON.parse(
  await readFile(`${ROOT}schema/milterd-policy.schema.json`, 'utf8'),
) as SchemaNode;

const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false });
// The config schema refers to the policy schema by its file name, as editors resolve it next to it.
ajv.addSchema(policySchema, 'milterd-policy.schema.json');
const validateConfig = ajv.compile(configSchema);
const validatePolicy = ajv.getSchema('milterd-policy.schema.json');
assert.ok(validatePolicy);

const keys = (node: SchemaNode | undefined): string[] => Object.keys(node?.properties ?? {}).sort();
const sorted = (list: readonly string[]): string[] => [...list].sort();

test('config schema: exactly the fields of the settings table (SETTINGS paths), enums from values.ts', () => {
  const paths: string[] = [];
  for (const [key, node] of Object.entries(configSchema.properties ?? {})) {
    if (node.properties === undefined) paths.push(key);
    else for (const sub of keys(node)) paths.push(`${key}.${sub}`);
  }
  assert.deepEqual(paths.sort(), sorted(SETTING_KEYS.map((k) => SETTINGS[k].path.join('.'))));
  assert.deepEqual(configSchema.properties?.logLevel?.enum, [...LOG_LEVELS]);
  assert.deepEqual(configSchema.properties?.failureDecision?.enum, [...FAILURE_DECISIONS]);
  assert.deepEqual(configSchema.properties?.logSyslogFacility?.enum, Object.keys(SYSLOG_FACILITIES));
  assert.deepEqual(configSchema.properties?.logSyslogFormat?.enum, [...SYSLOG_FORMATS]);
});

test('config schema: a filters entry has exactly the keys of the member parser (pipeline-config.ts) and of parseMemberCondition', () => {
  const member = configSchema.$defs?.member;
  assert.deepEqual(keys(member), sorted(MEMBER_KEYS));
  assert.deepEqual(keys(member?.properties?.timeouts), sorted(MEMBER_TIMEOUT_KEYS));
  assert.deepEqual(keys(member?.properties?.breaker), sorted(MEMBER_BREAKER_KEYS));
  assert.deepEqual(member?.properties?.['on-failure']?.enum, [...ON_FAILURE_ACTIONS]);
  assert.deepEqual(member?.properties?.builtin?.enum, [...BUILTIN_MEMBERS]);
  assert.deepEqual(keys(configSchema.$defs?.memberCondition), sorted(MEMBER_CONDITION_KEYS));
  assert.deepEqual(
    member?.oneOf?.map((o) => o.required),
    [['builtin'], ['module'], ['upstream']],
  );
});

test('policy schema: exactly the keys of the policy loader (TOP, RULE, WHEN, PREFIX keys, LIMIT_KINDS)', () => {
  const rule = policySchema.$defs?.rule;
  assert.deepEqual(keys(policySchema), sorted(TOP_KEYS));
  assert.deepEqual(keys(rule), sorted(RULE_KEYS));
  assert.deepEqual(keys(rule?.properties?.when), sorted(WHEN_KEYS));
  assert.deepEqual(keys(policySchema.properties?.['client-prefix']), sorted(PREFIX_KEYS));
  assert.deepEqual(
    rule?.oneOf?.map((o) => o.required),
    LIMIT_KINDS.map((k) => [k]),
  );
});

test('the defaults, written as a config file (what check-config prints), validate', () => {
  const doc = settingsToConfigObject(defaultSettings());
  assert.ok(validateConfig(doc), JSON.stringify(validateConfig.errors));
});

test('every example config and policy validates (and loads)', async () => {
  const example = await readFile(`${ROOT}examples/milterd.yaml`, 'utf8');
  assert.match(example, /^# yaml-language-server: \$schema=\.\.\/schema\/milterd-config\.schema\.json$/m);
  assert.ok(validateConfig(parse(example)), JSON.stringify(validateConfig.errors));
  assert.deepEqual(parseConfigText(example, 'milterd.yaml').problems, []);

  const policies: Array<[string, string]> = [['default policy', DEFAULT_POLICY_YAML]];
  const dir = `${ROOT}fixtures/policy/`;
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.yaml') && !n.startsWith('invalid'))) {
    policies.push([name, await readFile(dir + name, 'utf8')]);
  }
  const doc = await readFile(`${ROOT}docs/policy.md`, 'utf8');
  for (const [i, block] of [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].entries()) {
    policies.push([`docs/policy.md block ${i + 1}`, block[1] ?? '']);
  }
  assert.ok(policies.length >= 6, policies.map((p) => p[0]).join());
  for (const [name, text] of policies) {
    assert.ok(validatePolicy(parse(text)), `${name}: ${JSON.stringify(validatePolicy.errors)}`);
    assert.deepEqual(checkPolicy(text, name).problems, [], name);
  }
});

const WRONG_CONFIGS: Array<[string, string]> = [
  ['misspelt field', 'maxConection: 10\n'],
  ['unknown log level', 'logLevel: loud\n'],
  ['unknown timeout', 'timeouts:\n  idel: 5s\n'],
  ['duration without a number', 'drainTimeout: soon\n'],
  ['admin on a unix socket', 'admin: unix:/run/admin.sock\n'],
  ['syslog over tcp', 'logSyslog: tcp:127.0.0.1:514\n'],
  ['unknown syslog facility', 'logSyslogFacility: maill\n'],
  ['listen not a socket spec', 'listen: [8890]\n'],
  ['inline policy with an unknown key', 'policy:\n  version: 1\n  rulez: []\n'],
  ['inline policy rule with two limits', 'policy:\n  rules:\n    - max-messages: 2\n      max-bytes: 1MB\n'],
  [
    'filters entry with module and upstream',
    'filters:\n  - module: a.js\n    upstream: inet:8891@127.0.0.1\n',
  ],
  ['filters entry with neither', 'filters:\n  - name: nothing\n'],
  ['unknown built-in filter', 'filters:\n  - builtin: dkim\n'],
  ['on-failure on a module', 'filters:\n  - module: a.js\n    on-failure: accept\n'],
  ['unknown upstream failure action', 'filters:\n  - upstream: inet:8891@127.0.0.1\n    on-failure: retry\n'],
  ['misspelt upstream timeout', 'filters:\n  - upstream: inet:8891@127.0.0.1\n    timeouts: { eoh: 5s }\n'],
  ['dry-run as text', 'filters:\n  - builtin: stamp\n    dry-run: maybe\n'],
];

const WRONG_POLICIES: Array<[string, string]> = [
  ['version 2', 'version: 2\n'],
  ['misspelt rule key', await readFile(`${ROOT}fixtures/policy/invalid-unknown-key.yaml`, 'utf8')],
  ['rule without a limit', 'rules:\n  - name: a\n'],
  ['window with another limit', 'rules:\n  - max-messages: 2\n    window: 1h\n'],
  ['ratio of 1', 'rules:\n  - max-failure-ratio: 1\n'],
  ['dry-run as text', 'dry-run: yes\n'],
  ['prefix too long', 'client-prefix:\n  ipv4: 33\n'],
  ['multi-line reply text', 'reply-text: "a\\nb"\n'],
];

test('wrong configs are refused by the schema and by the loader', () => {
  for (const [title, text] of WRONG_CONFIGS) {
    assert.equal(validateConfig(parse(text)), false, `schema accepted: ${title}`);
    const { values, problems } = parseConfigText(text, 'c.yaml');
    const policy =
      values.policy?.kind === 'inline' ? checkPolicy(values.policy.source, 'c.yaml').problems : [];
    assert.ok(problems.length + policy.length > 0, `loader accepted: ${title}`);
  }
});

test('wrong policies are refused by the schema and by the loader', () => {
  for (const [title, text] of WRONG_POLICIES) {
    assert.equal(validatePolicy(parse(text)), false, `schema accepted: ${title}`);
    assert.ok(checkPolicy(text, 'p.yaml').problems.length > 0, `loader accepted: ${title}`);
  }
});

test('package.json publishes both schemas (files and exports)', async () => {
  const pkg = JSON.parse(await readFile(`${ROOT}package.json`, 'utf8')) as {
    files: string[];
    exports: Record<string, unknown>;
  };
  assert.ok(pkg.files.includes('schema/'));
  for (const name of ['milterd-config', 'milterd-policy']) {
    assert.deepEqual(pkg.exports[`./schema/${name}.schema.json`], {
      default: `./schema/${name}.schema.json`,
    });
  }
});
