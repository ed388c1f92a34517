/**
 * The monitoring examples against Prometheus' own tooling (Debian's `prometheus` package ships promtool;
 * scripts/install-test-deps.sh installs it): the alert rules pass `promtool check rules`, a live scrape of
 * the daemon passes `promtool check metrics` without a single lint remark, and every metric the rules and
 * the Grafana dashboard query is one the daemon exports.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { Daemon, httpGet, parsePrometheus, ROOT, type Exposition } from './helpers.js';

const RULES = `${ROOT}examples/prometheus/milterd-rules.yml`;
const DASHBOARD = `${ROOT}examples/grafana/milterd-dashboard.json`;

/** Run promtool with `input` on stdin; resolves with its exit code and output. */
function promtool(args: string[], input?: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
    child.stdin.end(input ?? '');
  });
}

/** Metric names in a PromQL expression (milterd's own and the process/runtime ones), histogram suffixes kept. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\b(?:milterd|process|nodejs)_[a-z0-9_]+/g)].map((m) => m[0]);
}

/** True when `name` is a family of `e` or a sample name of one (`_bucket`, `_sum`, `_count`). */
function exported(e: Exposition, name: string): boolean {
  if (e.families.has(name)) return true;
  const family = name.replace(/_(bucket|sum|count)$/, '');
  return family !== name && e.families.get(family)?.type === 'histogram';
}

/** A daemon that has seen one message, scraped once. */
async function liveScrape(t: { after: (fn: () => Promise<void> | void) => void }): Promise<string> {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  const client = await MilterClient.connect(milter);
  t.after(() => client.close());
  await playMessage(client, {
    connect: { hostname: 'client.example.org', family: 'inet', port: 40000, address: '192.0.2.22' },
    helo: 'client.example.org',
    sender: '<a@example.org>',
    recipients: ['<b@example.net>'],
    headers: [['Subject', 'promtool']],
    body: 'hello\r\n',
  });
  await client.quit();
  const res = await httpGet(adminPort, '/metrics');
  assert.equal(res.status, 200);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
  return res.body;
}

test('promtool check rules accepts examples/prometheus/milterd-rules.yml', async () => {
  const r = await promtool(['check', 'rules', RULES]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /SUCCESS: \d+ rules found/);
});

test('promtool check metrics: a live scrape has no errors and no lint remarks', async (t) => {
  const body = await liveScrape(t);
  const r = await promtool(['check', 'metrics'], body);
  assert.equal(r.code, 0, r.out);
  assert.equal(r.out.trim(), '', `promtool lint output:\n${r.out}`);
});

test('every metric the alert rules and the Grafana dashboard query is exported by the daemon', async (t) => {
  const e = parsePrometheus(await liveScrape(t));
  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as {
    panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
    templating: { list: Array<{ definition?: string }> };
  };
  assert.ok(dashboard.panels.length > 0);
  const exprs: string[] = [];
  for (const p of dashboard.panels) {
    assert.ok(p.targets.length > 0, `panel "${p.title}" has queries`);
    exprs.push(...p.targets.map((x) => x.expr));
  }
  exprs.push(...dashboard.templating.list.map((v) => v.definition ?? ''));
  // The rules file is YAML; its `expr:` values are the only places metric names appear outside comments.
  const rules = (await readFile(RULES, 'utf8')).split('\n').filter((l) => !l.trimStart().startsWith('#'));
  exprs.push(rules.join('\n'));
  const names = new Set(exprs.flatMap(metricNames));
  for (const required of ['milterd_messages_total', 'process_open_fds', 'milterd_max_connections']) {
    assert.ok(names.has(required), `${required} is used`);
  }
  const missing = [...names].filter((n) => !exported(e, n));
  assert.deepEqual(missing, [], 'metrics queried but not exported');
});
