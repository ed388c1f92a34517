/**
 * One table of defaults (src/defaults.ts): the daemon's option table, its help texts, the config schema's
 * descriptions and the README's option table all state the value DEFAULTS holds, so none of them can drift.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultSettings, SETTING_KEYS, SETTINGS, type DaemonSettings } from '../../../src/cli/options.js';
import { DEFAULTS } from '../../../src/defaults.js';
import { MILTER_MDS_64K } from '../../../src/protocol/constants.js';
import { DEFAULT_BACKLOG } from '../../../src/server/listen.js';
import { BODY_MEMORY_LIMIT } from '../../../src/session/body-store.js';
import { ADMIN_DEFAULTS } from '../../../src/admin/server.js';
import { ASYNC_LOG_DEFAULTS } from '../../../src/logging/async-destination.js';

// Tests run from dist/test/unit/defaults: the repository root is four levels up.
const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

/** Each daemon setting with a counterpart in DEFAULTS. */
const FROM_DEFAULTS: Partial<Record<keyof DaemonSettings, unknown>> = {
  listen: [DEFAULTS.listen],
  logBuffer: DEFAULTS.logBufferBytes,
  maxConnections: DEFAULTS.maxConnections,
  maxConnectionsPerPeer: DEFAULTS.maxConnectionsPerPeer,
  backlog: DEFAULTS.backlog,
  sharedReadBuffer: DEFAULTS.sharedReadBuffer,
  timeoutNegotiate: DEFAULTS.daemonNegotiateMs,
  timeoutFrame: DEFAULTS.frameMs,
  timeoutIdle: DEFAULTS.daemonIdleMs,
  timeoutCallback: DEFAULTS.callbackMs,
  failureDecision: DEFAULTS.failureDecision,
  drainTimeout: DEFAULTS.drainMs,
  adminMaxConnections: DEFAULTS.adminMaxConnections,
};

test('the daemon option defaults are the DEFAULTS table, and their help text parses back to the same value', () => {
  const defaults = defaultSettings();
  for (const [key, value] of Object.entries(FROM_DEFAULTS) as Array<[keyof DaemonSettings, unknown]>) {
    const def = SETTINGS[key];
    assert.deepEqual(def.defaultValue, value, key);
    assert.deepEqual(defaults[key], value, key);
    // `--help` shows defaultText: it must mean the default, read by the option's own parser.
    assert.deepEqual(
      (def.fromText as (t: string, p: unknown) => unknown)(def.defaultText, undefined),
      value,
      `${key}: ${def.defaultText}`,
    );
  }
});

test('the library and the daemon share one callback budget: 30 s', () => {
  assert.equal(DEFAULTS.callbackMs, 30_000);
  assert.equal(SETTINGS.timeoutCallback.defaultValue, DEFAULTS.callbackMs);
  assert.equal(SETTINGS.timeoutCallback.defaultText, '30s');
});

test('the tables that kept their own name read DEFAULTS', () => {
  assert.equal(DEFAULTS.maxDataSize, MILTER_MDS_64K);
  assert.equal(DEFAULT_BACKLOG, DEFAULTS.backlog);
  assert.equal(BODY_MEMORY_LIMIT, DEFAULTS.bodyMemoryLimit);
  assert.equal(ADMIN_DEFAULTS.maxConnections, DEFAULTS.adminMaxConnections);
  assert.equal(ASYNC_LOG_DEFAULTS.maxBufferBytes, DEFAULTS.logBufferBytes);
});

test('the config schema and the README state every default as the option table does', async () => {
  interface Node {
    properties?: Record<string, Node>;
    description?: string;
  }
  const schema = JSON.parse(await readFile(`${ROOT}schema/milterd-config.schema.json`, 'utf8')) as Node;
  const readme = await readFile(`${ROOT}README.md`, 'utf8');
  let checked = 0;
  for (const key of SETTING_KEYS) {
    const def = SETTINGS[key];
    if (!(key in FROM_DEFAULTS)) continue;
    let node: Node | undefined = schema;
    for (const part of def.path) node = node?.properties?.[part];
    const stated = /Default ([^ ]+?)\.?$/.exec(node?.description ?? '')?.[1];
    assert.equal(stated, def.defaultText, `schema ${def.path.join('.')}: ${node?.description}`);
    // The README row of the option: `| \`--flag …\` | env | field | default | meaning |`.
    const long = /--[a-z-]+/.exec(def.flags)?.[0] ?? '';
    const row = readme.split('\n').find((l) => l.startsWith('| `') && l.includes(`${long} `));
    assert.ok(row, `README row of ${long}`);
    const cell = row.split(' | ')[3] ?? '';
    assert.equal(/`([^`]*)`/.exec(cell)?.[1], def.defaultText, `README ${long}: ${cell}`);
    checked++;
  }
  assert.equal(checked, Object.keys(FROM_DEFAULTS).length);
});
