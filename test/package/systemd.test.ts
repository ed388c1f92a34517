/**
 * examples/systemd/milterd.service: `systemd-analyze verify` accepts it without a single diagnostic,
 * `systemd-analyze security --offline` rates it well hardened, it holds the settings the example promises
 * (dedicated user, read-only system, no capabilities, no MemoryDenyWriteExecute, stop timeout above the
 * drain timeout), and its ExecStart/ExecReload/KillSignal run milterd as systemd would (SIGHUP reloads,
 * SIGTERM drains to exit 0).
 *
 * systemd-analyze verify insists that ExecStart's binary exists, and `--root=DIR` would look for every
 * unit it depends on (sysinit.target...) under DIR too. So the test verifies a copy of the unit whose
 * ExecStart binary, /usr/local/bin/milterd (where `npm install -g` puts it), is replaced by this
 * repository's bin/milterd.js, and nothing else. verify exits 0 even on unknown keys or bad values (it
 * only prints them), hence the check of its output, and a misspelt copy to show that it does print them.
 * Needs the `systemd` package (systemd-analyze; scripts/install-test-deps.sh), not a running systemd.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { SETTINGS } from '../../src/cli/options.js';
import { parseDuration } from '../../src/cli/values.js';
import { Daemon, ROOT } from '../cli/helpers.js';
import { tempDir } from '../helpers/wait.js';

const exec = promisify(execFile);
const UNIT = path.join(ROOT, 'examples', 'systemd', 'milterd.service');
const INSTALLED_BIN = '/usr/local/bin/milterd';

/** `systemd-analyze ARGS`: exit code and everything it printed. */
async function analyze(args: string[], cwd: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await exec('systemd-analyze', args, {
      cwd,
      env: { ...process.env, SYSTEMD_COLORS: '0' },
    });
    return { code: 0, output: stdout + stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    if (e.code === 'ENOENT')
      throw new Error('systemd-analyze is not installed (apt-get install systemd)', { cause: err });
    return { code: typeof e.code === 'number' ? e.code : -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** The unit with ExecStart's binary replaced by the repository's, written as DIR/milterd.service. */
async function testableCopy(dir: string, edit: (text: string) => string = (s) => s): Promise<string> {
  const text = await readFile(UNIT, 'utf8');
  assert.ok(text.includes(`ExecStart=${INSTALLED_BIN} `), `ExecStart runs ${INSTALLED_BIN}`);
  const file = path.join(dir, 'milterd.service');
  await writeFile(
    file,
    edit(text.replace(`ExecStart=${INSTALLED_BIN} `, `ExecStart=${ROOT}bin/milterd.js `)),
  );
  return file;
}

/** The [Service] settings: key -> every value it is given, in order. */
async function serviceSettings(): Promise<Map<string, string[]>> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of (await readFile(UNIT, 'utf8')).split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1] as string;
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(eq > 0, `a key=value line: ${line}`);
    if (section !== 'Service') continue;
    const key = line.slice(0, eq);
    settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1)]);
  }
  return settings;
}

test('systemd unit: systemd-analyze verify prints nothing (and does print a misspelt key)', async (t) => {
  const dir = await tempDir(t);
  const good = await testableCopy(dir);
  assert.deepEqual(await analyze(['verify', good], dir), { code: 0, output: '' });

  const badDir = await tempDir(t);
  const bad = await testableCopy(badDir, (s) => s.replace('ProtectSystem=strict', 'ProtectSytem=strict'));
  const { output } = await analyze(['verify', bad], badDir);
  assert.match(output, /Unknown key '?ProtectSytem'?/);
});

test('systemd unit: systemd-analyze security --offline rates its exposure at 2.0 or lower', async (t) => {
  const dir = await tempDir(t);
  const file = await testableCopy(dir);
  // The threshold is on systemd's 0-100 scale; it prints the level divided by 10 ("1.7 OK").
  const { code, output } = await analyze(['security', '--offline=yes', '--threshold=20', file], dir);
  assert.equal(code, 0, output);
  const level = /Overall exposure level for milterd\.service: (\d+\.\d)/.exec(output);
  assert.ok(level, output);
  assert.ok(Number(level[1]) <= 2, output);
});

test('systemd unit: the hardening and stop settings it promises', async () => {
  const s = await serviceSettings();
  const one = (key: string): string | undefined => s.get(key)?.at(-1);
  assert.ok(one('User') === 'milterd' || one('DynamicUser') === 'yes', 'a dedicated user');
  for (const [key, value] of [
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['NoNewPrivileges', 'yes'],
    ['PrivateTmp', 'yes'],
    ['RuntimeDirectory', 'milterd'],
    ['RestrictAddressFamilies', 'AF_UNIX AF_INET AF_INET6'],
    ['CapabilityBoundingSet', ''],
    ['SystemCallFilter', '@system-service'],
    ['KillSignal', 'SIGTERM'],
    ['ExecReload', '/bin/kill -HUP $MAINPID'],
  ] as const)
    assert.equal(one(key), value, key);
  // V8's JIT needs W+X memory: node would not start.
  assert.equal(s.has('MemoryDenyWriteExecute'), false);
  // systemd's SIGKILL must not cut the drain short.
  const stop = parseDuration(one('TimeoutStopSec') ?? '');
  assert.ok(stop > SETTINGS.drainTimeout.defaultValue, `TimeoutStopSec ${String(one('TimeoutStopSec'))}`);
  // The socket directory given in the comments is the RuntimeDirectory.
  assert.match(await readFile(UNIT, 'utf8'), /listen: unix:\/run\/milterd\/milterd\.sock/);
});

test('systemd unit: its ExecStart serves, its ExecReload reloads, its KillSignal drains to exit 0', async (t) => {
  const s = await serviceSettings();
  const execStart = s.get('ExecStart')?.at(-1) ?? '';
  const [bin, ...args] = execStart.split(' ');
  assert.equal(bin, INSTALLED_BIN);
  // The same arguments, with a config file of the test's (loopback, ephemeral port, admin off).
  const dir = await tempDir(t);
  const config = path.join(dir, 'milterd.yaml');
  await writeFile(config, 'listen: inet:0@127.0.0.1\nadmin: off\n');
  const configIndex = args.indexOf('--config');
  assert.deepEqual(args.slice(0, configIndex), ['serve']);
  assert.equal(args[configIndex + 1], '/etc/milterd/milterd.yaml');
  args[configIndex + 1] = config;
  const d = new Daemon(args.slice(1));
  t.after(() => d.kill());
  await d.started();

  // ExecReload, with $MAINPID as systemd substitutes it.
  const reload = (s.get('ExecReload')?.at(-1) ?? '').replace('$MAINPID', String(d.child.pid));
  const [kill, ...killArgs] = reload.split(' ');
  await exec(kill as string, killArgs);
  await d.waitFor((l) => l.msg === 'configuration reloaded', 'reload');

  d.signal(s.get('KillSignal')?.at(-1) as NodeJS.Signals);
  assert.deepEqual(await d.exited, { code: 0, signal: null });
  assert.ok(d.lines.some((l) => l.msg === 'milterd stopped'));
});
