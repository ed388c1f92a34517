/**
 * `milterd serve` hosting a pipeline, through the real binary: filter modules (ESM, CommonJS, a factory
 * with options, logger and metrics) from `--filter` and the config file's `filters:`, the built-in stamp
 * as an ordinary member, located one-line errors (exit 3) for modules that do not load or are not
 * filters, SIGHUP with a changed module (new connections get it, an open one keeps its own) and with a
 * broken one (refused, the running pipeline stays), check-config's pipeline, per-member metrics and debug
 * lines.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { MilterClient, playMessage, type MessageScript } from '../../src/client/index.js';
import type { EomResult } from '../../src/client/index.js';
import { SMFIP_NOEOH, SMFIP_NOHDRS } from '../../src/protocol/constants.js';
import { Daemon, httpGet, parsePrometheus, runMilterd, sampleValue } from './helpers.js';

const CONNECT = {
  hostname: 'client.example.org',
  family: 'inet' as const,
  port: 40000,
  address: '192.0.2.10',
};

/** A message on a connection that already sent CONNECT and HELO. */
const NEXT_MESSAGE: MessageScript = {
  sender: '<a@example.org>',
  recipients: ['<b@example.net>'],
  headers: [
    ['From', 'a@example.org'],
    ['Subject', 'pipeline'],
  ],
  body: 'hello\r\n',
};

const MESSAGE: MessageScript = { connect: CONNECT, helo: 'client.example.org', ...NEXT_MESSAGE };

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-pipeline-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** An ESM filter module adding `name: value` at end of message. */
const esmHeader = (name: string, value: string): string =>
  `export default {\n  name: 'esm',\n  actions: ['addHeader'],\n  eom(ctx) {\n    ctx.addHeader(${JSON.stringify(name)}, ${JSON.stringify(value)});\n  },\n};\n`;

/** A CommonJS filter module (module.exports) adding `name: value`. */
const cjsHeader = (name: string, value: string): string =>
  `'use strict';\nmodule.exports = {\n  actions: ['addHeader'],\n  eom(ctx) {\n    ctx.addHeader(${JSON.stringify(name)}, ${JSON.stringify(value)});\n  },\n};\n`;

/**
 * An ESM factory: its options name the header, it logs through the logger it is given and counts
 * messages in a metric of the daemon's registry.
 */
const FACTORY = `export default function create(options, { logger, metrics }) {
  const seen = metrics.counter({ name: 'test_factory_messages_total', help: 'Messages the factory filter saw.' });
  logger.info({ header: options.header }, 'factory filter created');
  return {
    actions: ['addHeader'],
    async eom(ctx) {
      seen.inc();
      ctx.addHeader(options.header, options.value);
    },
  };
}
`;

/** The headers the pipeline added at end of message, as `Name: value`. */
function added(eom: EomResult | undefined): string[] {
  return (eom?.modifications ?? []).flatMap((m) => (m.kind === 'addHeader' ? [`${m.name}: ${m.value}`] : []));
}

async function oneMessage(milter: string): Promise<string[]> {
  const client = await MilterClient.connect(milter);
  try {
    const r = await playMessage(client, MESSAGE);
    assert.equal(r.reply.kind, 'continue', JSON.stringify(r.reply));
    return added(r.eom);
  } finally {
    await client.quit().catch(() => client.close());
  }
}

test('config filters: ESM, CommonJS, a factory with options, and the stamp run in order; metrics and debug lines per member', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'first.mjs'), esmHeader('X-First', 'esm'));
  await writeFile(path.join(dir, 'second.cjs'), cjsHeader('X-Second', 'cjs'));
  await writeFile(path.join(dir, 'factory.mjs'), FACTORY);
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(
    config,
    [
      'listen: inet:0@127.0.0.1',
      'admin: inet:0@127.0.0.1',
      'logLevel: debug',
      'filters:',
      '  - module: first.mjs',
      '  - module: ./second.cjs',
      '    name: second',
      '  - module: factory.mjs',
      '    options: { header: X-Factory, value: from options }',
      '  - builtin: stamp',
      '',
    ].join('\n'),
  );
  const d = new Daemon(['--config', config]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  const started = await d.waitFor((l) => l.msg === 'milterd started');
  assert.deepEqual(started.filters, ['first', 'second', 'factory', 'stamp']);
  const created = await d.waitFor((l) => l.msg === 'factory filter created');
  assert.equal(created.member, 'factory', "the factory's logger has its member bound");
  assert.equal(created.header, 'X-Factory');

  const headers = await oneMessage(milter);
  assert.deepEqual(headers.slice(0, 3), ['X-First: esm', 'X-Second: cjs', 'X-Factory: from options']);
  assert.match(
    headers[3] ?? '',
    /^X-Milterd: milterd \S+$/,
    'the built-in stamp is an ordinary member, last',
  );
  assert.equal(headers.length, 4);

  // One debug line per member decision, named by member and stage.
  for (const member of ['first', 'second', 'factory', 'stamp']) {
    await d.waitFor(
      (l) =>
        l.msg === 'member decision' && l.member === member && l.stage === 'eom' && l.decision === 'continue',
      `debug line of ${member}`,
    );
  }

  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  for (const member of ['first', 'second', 'factory', 'stamp']) {
    assert.equal(
      sampleValue(metrics, 'milterd_member_decisions_total', {
        member,
        stage: 'eom',
        decision: 'continue',
        mode: 'enforce',
      }),
      1,
      `${member}: one eom decision`,
    );
    assert.equal(sampleValue(metrics, 'milterd_member_duration_seconds_count', { member, stage: 'eom' }), 1);
  }
  assert.equal(sampleValue(metrics, 'test_factory_messages_total'), 1, "the factory's metric is served");

  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('--filter and --upstream on the command line replace the config file filters; builtin:stamp names the stamp', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'only.js'), cjsHeader('X-Only', 'cli'));
  await writeFile(path.join(dir, 'package.json'), '{ "type": "commonjs" }\n');
  await writeFile(path.join(dir, 'file.mjs'), esmHeader('X-File', 'config'));
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(config, 'listen: inet:0@127.0.0.1\nfilters:\n  - module: file.mjs\n');
  // A relative --filter is relative to the working directory.
  const d = new Daemon([
    '--config',
    config,
    '--filter',
    path.relative(process.cwd(), path.join(dir, 'only.js')),
  ]);
  t.after(() => d.kill());
  const { milter } = await d.started();
  assert.deepEqual(await oneMessage(milter), ['X-Only: cli'], 'no stamp, no file member');
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);

  // The environment: both variables, comma-separated; filters before upstreams. The command line wins
  // over it as a whole and keeps the order of --upstream and --filter.
  const env = {
    MILTERD_FILTER: `${path.join(dir, 'file.mjs')},builtin:stamp`,
    MILTERD_UPSTREAM: 'inet:8891@127.0.0.1',
  };
  const fromEnv = await runMilterd(['check-config'], { env });
  assert.equal(fromEnv.code, 0, fromEnv.stderr);
  const names = (out: string): unknown[] =>
    (JSON.parse(out) as { pipeline: Array<{ name: string }> }).pipeline.map((m) => m.name);
  assert.deepEqual(names(fromEnv.stdout), ['file', 'stamp', 'inet:8891@127.0.0.1']);
  const fromCli = await runMilterd(
    ['check-config', '--upstream', 'unix:/run/dkim.sock', '--filter', path.join(dir, 'only.js')],
    { env },
  );
  assert.equal(fromCli.code, 0, fromCli.stderr);
  assert.deepEqual(names(fromCli.stdout), ['unix:/run/dkim.sock', 'only']);

  const d2 = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--filter',
    'builtin:stamp',
    '--filter',
    path.join(dir, 'only.js'),
  ]);
  t.after(() => d2.kill());
  const started = await d2.started();
  const headers = await oneMessage(started.milter);
  assert.match(headers[0] ?? '', /^X-Milterd: /);
  assert.equal(headers[1], 'X-Only: cli');
  d2.signal('SIGTERM');
  assert.equal((await d2.exited).code, 0);
});

test('the default pipeline, the stamp alone, runs outside the pipeline layer: the MTA is asked for no header and no EOH; as one member of two it is', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'quiet.mjs'), 'export default { name: "quiet", close() {} };\n');
  const headerSteps = SMFIP_NOHDRS | SMFIP_NOEOH;
  const play = async (args: string[]): Promise<{ protocol: number; headers: string[]; eoh: string }> => {
    const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1', ...args]);
    t.after(() => d.kill());
    const { milter, adminPort } = await d.started();
    const client = await MilterClient.connect(milter);
    try {
      const r = await playMessage(client, MESSAGE);
      assert.equal(r.reply.kind, 'continue', JSON.stringify(r.reply));
      assert.match(added(r.eom)[0] ?? '', /^X-Milterd: milterd /);
      const m = parsePrometheus((await httpGet(adminPort as number, '/metrics')).body);
      const members = sampleValue(m, 'milterd_member_decisions_total', { member: 'stamp' });
      assert.equal(members > 0, args.length > 0, 'per-member series only inside the pipeline layer');
      return {
        protocol: client.negotiated.protocol & headerSteps,
        headers: r.headers.map((h) => h.kind),
        eoh: r.eoh?.kind ?? 'none',
      };
    } finally {
      await client.quit().catch(() => client.close());
      d.signal('SIGTERM');
      assert.equal((await d.exited).code, 0);
    }
  };
  assert.deepEqual(await play([]), {
    protocol: headerSteps,
    headers: ['skipped', 'skipped'],
    eoh: 'skipped',
  });
  // Inside the pipeline a member that may add a header keeps the MTA's headers coming (and EOH with them).
  const inPipeline = await play(['--filter', 'builtin:stamp', '--filter', path.join(dir, 'quiet.mjs')]);
  assert.equal(inPipeline.protocol, 0);
  assert.equal(inPipeline.headers.length, 2);
  assert.ok(!inPipeline.headers.includes('skipped'));
});

test('a module that does not load or is not a filter: exit 3 with one located line, before listening', async (t) => {
  const dir = await tempDir(t);
  const cases: Array<{ file: string; text?: string; why: RegExp }> = [
    { file: 'missing.mjs', why: /cannot load module .*missing\.mjs: file not found$/ },
    {
      file: 'syntax.mjs',
      text: 'export default {\n  eom(ctx) { ctx.addHeader( }\n};\n',
      why: /cannot load module .*syntax\.mjs: .+/,
    },
    {
      file: 'number.mjs',
      text: 'export default 42;\n',
      why: /not a filter: expected a Filter object or a factory function, got number$/,
    },
    { file: 'nodefault.mjs', text: 'export const filter = { eom() {} };\n', why: /no default export/ },
    {
      file: 'badcb.cjs',
      text: 'module.exports = { eom: "yes" };\n',
      why: /not a filter: "eom" is string, expected a function$/,
    },
    {
      file: 'throws.mjs',
      text: 'export default () => { throw new Error("no key configured"); };\n',
      why: /the factory failed: no key configured$/,
    },
  ];
  for (const c of cases) {
    if (c.text !== undefined) await writeFile(path.join(dir, c.file), c.text);
    const config = path.join(dir, `${c.file}.yaml`);
    await writeFile(
      config,
      `listen: inet:0@127.0.0.1\nfilters:\n  - builtin: stamp\n  - name: bad\n    module: ${c.file}\n`,
    );
    const r = await runMilterd(['serve', '--config', config]);
    assert.equal(r.code, 3, `${c.file}: exit 3; stderr: ${r.stderr}`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `${c.file}: one line: ${r.stderr}`);
    assert.match(
      lines[0] ?? '',
      new RegExp(`^milterd: ${config.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4:\\d+: filters\\[1\\]: `),
    );
    assert.match(lines[0] ?? '', c.why, c.file);
    assert.ok(!r.stdout.includes('milterd started'), `${c.file}: never started`);
  }
  // On the command line the flag locates it.
  const r = await runMilterd([
    'serve',
    '--listen',
    'inet:0@127.0.0.1',
    '--filter',
    path.join(dir, 'number.mjs'),
  ]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /^milterd: --filter: module .*number\.mjs: not a filter: .*got number\n$/);
  // The same problem, with its location, from check-config.
  const check = await runMilterd(['check-config', path.join(dir, 'badcb.cjs.yaml')]);
  assert.equal(check.code, 3);
  assert.match(check.stderr, /badcb\.cjs\.yaml:4:\d+: filters\[1\]: module .*badcb\.cjs: not a filter/);
});

test('SIGHUP: a changed module serves new connections, an open connection keeps its own; a broken one is refused', async (t) => {
  const dir = await tempDir(t);
  const esm = path.join(dir, 'stamp.mjs');
  const cjs = path.join(dir, 'stamp.cjs');
  await writeFile(esm, esmHeader('X-Esm', 'v1'));
  await writeFile(cjs, cjsHeader('X-Cjs', 'v1'));
  const d = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--filter',
    esm,
    '--filter',
    cjs,
  ]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  assert.deepEqual(await oneMessage(milter), ['X-Esm: v1', 'X-Cjs: v1']);

  // A connection that started before the reload, with one message through the v1 pipeline.
  const open = await MilterClient.connect(milter);
  t.after(() => open.close());
  assert.deepEqual(added((await playMessage(open, MESSAGE)).eom), ['X-Esm: v1', 'X-Cjs: v1']);

  await writeFile(esm, esmHeader('X-Esm', 'v2'));
  await writeFile(cjs, cjsHeader('X-Cjs', 'v2'));
  d.signal('SIGHUP');
  const reloaded = await d.waitFor((l) => l.msg === 'configuration reloaded', 'reload');
  assert.deepEqual(reloaded.filters, ['stamp', 'stamp-2']);
  assert.deepEqual(
    await oneMessage(milter),
    ['X-Esm: v2', 'X-Cjs: v2'],
    'new connections: the changed modules',
  );

  const kept = await playMessage(open, NEXT_MESSAGE);
  assert.equal(kept.reply.kind, 'continue');
  assert.deepEqual(added(kept.eom), ['X-Esm: v1', 'X-Cjs: v1'], 'the open connection keeps its pipeline');
  await open.quit();

  // A broken module: refused, located, and v2 stays for new connections.
  await writeFile(cjs, 'module.exports = "not a filter";\n');
  d.signal('SIGHUP');
  const refused = await d.waitFor((l) => String(l.msg).startsWith('reload refused'), 'refusal');
  assert.equal(refused.field, '--filter');
  assert.match(
    String((refused.err as { message?: string }).message),
    /stamp\.cjs: not a filter: .*got string/,
  );
  assert.deepEqual(await oneMessage(milter), ['X-Esm: v2', 'X-Cjs: v2'], 'the running pipeline stays');

  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  assert.equal(sampleValue(metrics, 'milterd_config_reloads_total', { result: 'ok' }), 1);
  assert.equal(sampleValue(metrics, 'milterd_config_reloads_total', { result: 'error' }), 1);
  assert.equal(sampleValue(metrics, 'milterd_config_last_reload_successful'), 0);

  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('check-config prints the effective pipeline: members in order, conditions, dry-run, upstream timeouts and failure action', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'subject.mjs'), esmHeader('X-Subject', 'x'));
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(
    config,
    [
      'filters:',
      '  - module: subject.mjs',
      '    options: { prefix: "[ext]" }',
      '    dry-run: true',
      '  - upstream: inet:8891@127.0.0.1',
      '    name: dkim',
      '    when: { daemon-port: [587] }',
      '    timeouts: { connect: 2s, eom: 20s }',
      '    on-failure: accept',
      '    breaker: { failures: 3, open: 1m }',
      '  - builtin: stamp',
      '',
    ].join('\n'),
  );
  const r = await runMilterd(['check-config', config]);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    pipeline: Array<Record<string, unknown>>;
    config: { filters: unknown[] };
  };
  assert.deepEqual(doc.pipeline, [
    {
      name: 'subject',
      module: path.join(dir, 'subject.mjs'),
      options: { prefix: '[ext]' },
      'dry-run': true,
      from: `${config}:2`,
    },
    {
      name: 'dkim',
      upstream: 'inet:8891@127.0.0.1',
      when: { 'daemon-port': [587] },
      'dry-run': false,
      timeouts: { connect: '2s', command: '10s', eom: '20s' },
      'on-failure': 'accept',
      breaker: { failures: 3, open: '1m' },
      from: `${config}:5`,
    },
    { name: 'stamp', builtin: 'stamp', 'dry-run': false, from: `${config}:11` },
  ]);
  assert.equal(doc.config.filters.length, 3, 'the config-file shaped copy lists them too');

  // Without any filters: the stamp alone, today's default.
  const plain = await runMilterd(['check-config']);
  assert.equal(plain.code, 0, plain.stderr);
  const def = JSON.parse(plain.stdout) as { pipeline: Array<Record<string, unknown>> };
  assert.deepEqual(def.pipeline, [{ name: 'stamp', builtin: 'stamp', 'dry-run': false, from: 'default' }]);

  // Entry problems are located at the key.
  await writeFile(
    config,
    'filters:\n  - module: subject.mjs\n    on-failure: accept\n  - upstream: nowhere\n',
  );
  const bad = await runMilterd(['check-config', config]);
  assert.equal(bad.code, 3);
  assert.match(
    bad.stderr,
    new RegExp(
      `${config.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3:\\d+: filters\\[0\\]\\.on-failure: only for an upstream: member`,
    ),
  );
});

test('when: and dry-run from the config file: a submission-only member, a rejecting member in dry-run (counted, not applied)', async (t) => {
  const dir = await tempDir(t);
  await writeFile(path.join(dir, 'submission.mjs'), esmHeader('X-Submission', 'yes'));
  await writeFile(
    path.join(dir, 'reject.mjs'),
    'export default { envfrom() { return { kind: "reject", reply: { code: 550, text: "no" } }; } };\n',
  );
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(
    config,
    [
      'listen: inet:0@127.0.0.1',
      'admin: inet:0@127.0.0.1',
      'filters:',
      '  - module: reject.mjs',
      '    dry-run: true',
      '  - module: submission.mjs',
      '    when: { daemon-port: [587] }',
      '',
    ].join('\n'),
  );
  const d = new Daemon(['--config', config]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);

  const play = async (port: string): Promise<string[]> => {
    const client = await MilterClient.connect(milter);
    try {
      const r = await playMessage(client, { ...MESSAGE, macros: { connect: { '{daemon_port}': port } } });
      assert.equal(r.reply.kind, 'continue', `the dry-run reject is not applied: ${JSON.stringify(r.reply)}`);
      return added(r.eom);
    } finally {
      await client.quit().catch(() => client.close());
    }
  };
  assert.deepEqual(await play('587'), ['X-Submission: yes'], 'on the submission port');
  assert.deepEqual(await play('25'), [], 'not on port 25');

  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  assert.equal(
    sampleValue(metrics, 'milterd_member_decisions_total', {
      member: 'reject',
      stage: 'envfrom',
      decision: 'reject',
      mode: 'dry-run',
    }),
    2,
  );
  assert.ok(
    metrics.samples.some(
      (s) => s.name === 'milterd_member_skipped_total' && s.labels.member === 'submission' && s.value >= 1,
    ),
    'the port-25 session skipped the submission member',
  );

  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);

  // A condition with a wrong key: one located line (exit 3), from serve and check-config alike.
  await writeFile(
    config,
    'listen: inet:0@127.0.0.1\nfilters:\n  - builtin: stamp\n    when: { daemon-prot: 587 }\n',
  );
  for (const args of [
    ['serve', '--config', config],
    ['check-config', config],
  ]) {
    const r = await runMilterd(args);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr.split('\n')[0] ?? '', /milterd\.yaml:3:\d+: .*filters\[0\]\.when.*daemon-prot/);
  }
});

test('--upstream to a milter in another process (a second milterd): its changes and replies come through; killed, the failure action and the breaker apply', async (t) => {
  const dir = await tempDir(t);
  await writeFile(
    path.join(dir, 'behind.mjs'),
    [
      'export default {',
      "  actions: ['addHeader'],",
      "  envfrom(ctx, sender) { if (sender === '<spam@example.org>') return { kind: 'reject', reply: { code: 550, xcode: '5.7.1', text: 'spam here' } }; },",
      "  eom(ctx) { ctx.addHeader('X-Behind', 'upstream'); },",
      '};',
      '',
    ].join('\n'),
  );
  const behind = new Daemon(['--listen', 'inet:0@127.0.0.1', '--filter', path.join(dir, 'behind.mjs')]);
  t.after(() => behind.kill());
  const upstream = (await behind.started()).milter;

  const front = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--upstream',
    upstream,
    '--filter',
    'builtin:stamp',
  ]);
  t.after(() => front.kill());
  const { milter, adminPort } = await front.started();
  assert.ok(adminPort);
  const started = await front.waitFor((l) => l.msg === 'milterd started');
  assert.deepEqual(started.filters, [upstream, 'stamp'], '--upstream and --filter in command-line order');

  const headers = await oneMessage(milter);
  assert.equal(headers[0], 'X-Behind: upstream', "the upstream's header first");
  assert.match(headers[1] ?? '', /^X-Milterd: /);

  const client = await MilterClient.connect(milter);
  try {
    const r = await playMessage(client, { ...MESSAGE, sender: '<spam@example.org>' });
    assert.equal(r.eom, undefined, 'stopped before end of message');
    assert.deepEqual(r.reply, { kind: 'replyCode', text: '550 5.7.1 spam here' }, "the upstream's reply");
  } finally {
    await client.quit().catch(() => client.close());
  }

  // The upstream goes away: the default failure action (tempfail) answers, never an accept without it.
  behind.signal('SIGKILL');
  await behind.exited;
  const after = await MilterClient.connect(milter);
  try {
    const r = await playMessage(after, MESSAGE);
    const reply = r.reply.kind === 'replyCode' ? r.reply.text.slice(0, 1) : r.reply.kind;
    assert.ok(reply === 'tempfail' || reply === '4', `tempfailed: ${JSON.stringify(r.reply)}`);
    assert.ok(r.stoppedAt !== 'eom' || added(r.eom).length === 0, 'nothing delivered as if filtered');
  } finally {
    await after.quit().catch(() => after.close());
  }
  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  assert.ok(
    metrics.samples.some(
      (s) => s.name === 'milterd_member_errors_total' && s.labels.member === upstream && s.value >= 1,
    ),
    'the upstream failure is counted for its member',
  );
  assert.equal(
    sampleValue(metrics, 'milterd_member_decisions_total', {
      member: upstream,
      stage: 'eom',
      decision: 'continue',
      mode: 'enforce',
    }),
    1,
  );
  assert.equal(
    sampleValue(metrics, 'milterd_member_breaker_state', { member: upstream, state: 'closed' }),
    1,
  );
  front.signal('SIGTERM');
  assert.equal((await front.exited).code, 0);

  // From the config file, a breaker that opens at the first failure: open, and still tempfail.
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(
    config,
    [
      'listen: inet:0@127.0.0.1',
      'admin: inet:0@127.0.0.1',
      'filters:',
      `  - upstream: ${upstream}`,
      '    name: gone',
      '    timeouts: { connect: 2s }',
      '    breaker: { failures: 1, open: 1h }',
      '',
    ].join('\n'),
  );
  const third = new Daemon(['--config', config]);
  t.after(() => third.kill());
  const s3 = await third.started();
  assert.ok(s3.adminPort);
  for (let i = 0; i < 2; i++) {
    const c = await MilterClient.connect(s3.milter);
    try {
      const r = await playMessage(c, MESSAGE);
      const reply = r.reply.kind === 'replyCode' ? r.reply.text.slice(0, 1) : r.reply.kind;
      assert.ok(reply === 'tempfail' || reply === '4', `session ${i}: ${JSON.stringify(r.reply)}`);
    } finally {
      await c.quit().catch(() => c.close());
    }
  }
  const m3 = parsePrometheus((await httpGet(s3.adminPort, '/metrics')).body);
  assert.equal(sampleValue(m3, 'milterd_member_breaker_state', { member: 'gone', state: 'open' }), 1);
  assert.equal(sampleValue(m3, 'milterd_member_breaker_state', { member: 'gone', state: 'closed' }), 0);
  third.signal('SIGTERM');
  assert.equal((await third.exited).code, 0);
});
