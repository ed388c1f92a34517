/**
 * docs/internals.md lists every metric milterd exports: the "## metrics" table (name, type, labels,
 * meaning) against a live daemon's /metrics (after one message, so the labelled families have series),
 * and against the registry's own label names for the families that have no series yet (policy, errors,
 * accept errors). Fails when an exported family is undocumented, when a documented one is not exported,
 * or when a type or a label set differs.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { DaemonMetrics } from '../../src/admin/observer.js';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { Daemon, httpGet, parsePrometheus, ROOT } from './helpers.js';

interface DocumentedMetric {
  type: string;
  labels: string[];
  meaning: string;
}

/** The rows of the metrics table of docs/internals.md, by name. */
async function documented(): Promise<Map<string, DocumentedMetric>> {
  const text = await readFile(path.join(ROOT, 'docs', 'internals.md'), 'utf8');
  const start = text.indexOf('\n## metrics\n');
  assert.ok(start >= 0, 'docs/internals.md has a "## metrics" section');
  const next = text.indexOf('\n## ', start + 1);
  const section = text.slice(start, next < 0 ? undefined : next);
  const out = new Map<string, DocumentedMetric>();
  for (const line of section.split('\n')) {
    if (!line.startsWith('| `')) continue;
    // | `name` | type | `label`, `label` | meaning |  (the meaning may hold backticks, not pipes)
    const cells = line.split('|').map((c) => c.trim());
    assert.equal(cells.length, 6, `a metrics row has 4 cells: ${line}`);
    const [, nameCell, type, labels, meaning] = cells as [string, string, string, string, string];
    const name = /^`([a-zA-Z_:][a-zA-Z0-9_:]*)`$/.exec(nameCell)?.[1];
    assert.ok(name !== undefined, `a metric name in backticks: ${line}`);
    assert.match(type, /^(counter|gauge|histogram)$/, `${name}: type`);
    assert.ok(!out.has(name), `${name} documented twice`);
    const labelNames = [...labels.matchAll(/`([a-zA-Z_][a-zA-Z0-9_]*)`/g)].map((l) => l[1] as string);
    assert.equal(labels, labelNames.map((l) => `\`${l}\``).join(', '), `${name}: labels as \`a\`, \`b\``);
    assert.ok(meaning.length > 10, `${name} has a meaning`);
    out.set(name, { type, labels: labelNames.sort(), meaning });
  }
  assert.ok(out.size > 0, 'the metrics table has rows');
  return out;
}

test('every metric /metrics exports is documented in docs/internals.md, with its type and labels, and no other', async (t) => {
  const docs = await documented();
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort !== undefined);

  // One message, so the labelled families of the hot path have series to read the labels from.
  const client = await MilterClient.connect(milter);
  try {
    await playMessage(client, {
      connect: { hostname: 'client.example.org', family: 'inet', port: 40000, address: '192.0.2.21' },
      helo: 'client.example.org',
      sender: '<a@example.org>',
      recipients: ['<b@example.net>'],
      headers: [['Subject', 'metrics docs']],
      body: 'hello\r\n',
    });
  } finally {
    await client.quit().catch(() => client.close());
  }

  const res = await httpGet(adminPort, '/metrics');
  assert.equal(res.status, 200);
  const exposition = parsePrometheus(res.body);
  const exported = [...exposition.families.keys()].sort();
  const listed = [...docs.keys()].sort();
  assert.deepEqual(
    exported.filter((n) => !docs.has(n)),
    [],
    'exported but not documented in docs/internals.md',
  );
  assert.deepEqual(
    listed.filter((n) => !exposition.families.has(n)),
    [],
    'documented in docs/internals.md but not exported',
  );

  for (const [name, family] of exposition.families) {
    const doc = docs.get(name) as DocumentedMetric;
    assert.equal(family.type, doc.type, `${name}: type`);
    // Label names of the live series (a histogram's `le` is the format's, not the metric's).
    const seriesNames = new Set(
      family.type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name],
    );
    for (const sample of exposition.samples.filter((s) => seriesNames.has(s.name))) {
      const labels = Object.keys(sample.labels)
        .filter((l) => l !== 'le')
        .sort();
      assert.deepEqual(labels, doc.labels, `${name}: labels of ${JSON.stringify(sample)}`);
    }
  }
  // Families with series now: the hot path's, the process's.
  for (const name of ['milterd_commands_total', 'milterd_decisions_total', 'milterd_messages_total']) {
    assert.ok(
      exposition.samples.some((s) => s.name === name),
      `${name} has series after a message`,
    );
  }
});

test("the documented labels are the registry's label names, also for families without series yet", async () => {
  const docs = await documented();
  const metrics = new DaemonMetrics({ version: '0.0.0-test' });
  try {
    const registered = metrics.registry.describe();
    assert.deepEqual(
      registered.map((m) => m.name).sort(),
      [...docs.keys()].sort(),
      'registered metrics = documented metrics',
    );
    for (const m of registered) {
      const doc = docs.get(m.name) as DocumentedMetric;
      assert.equal(m.type, doc.type, `${m.name}: type`);
      assert.deepEqual([...m.labelNames].sort(), doc.labels, `${m.name}: labels`);
    }
  } finally {
    metrics.stop();
  }
});
