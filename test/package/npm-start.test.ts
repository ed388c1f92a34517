/**
 * `npm start` (package.json's script and scripts/start.sh) hands stop signals to the daemon: SIGTERM sent
 * to npm's pid, and Ctrl-C as a terminal sends it (SIGINT to npm's whole process group), each make the
 * daemon drain once, let the session in flight finish, and exit 0 before npm does.
 *
 * npm runs in a copy of the package (package.json, tsconfig.json, bin/, src/, scripts/, node_modules as
 * a link) so that its `npm run build` never rewrites the dist/ these tests run from. npm is spawned in a
 * process group of its own (`detached`), as a shell starts a job, so that the group can be signalled.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cp, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { MilterClient } from '../../src/client/index.js';
import { cleanEnv, ROOT, type LogLine } from '../cli/helpers.js';
import { tempDir, waitFor } from '../helpers/wait.js';

const CONNECT = {
  hostname: 'client.example.org',
  family: 'inet' as const,
  port: 40000,
  address: '192.0.2.10',
};

/** A copy of the package that `npm start` can build and run. */
async function packageCopy(t: TestContext): Promise<string> {
  const dir = await tempDir(t);
  for (const entry of ['package.json', 'tsconfig.json', 'bin', 'src', 'scripts'])
    await cp(path.join(ROOT, entry), path.join(dir, entry), { recursive: true });
  await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

/** `npm start -- ARGS` in `dir`, its JSON log lines (npm's banner lines are skipped) and its exit. */
class NpmStart {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(dir: string, args: string[]) {
    // The npm_* variables of an enclosing `npm test` would leak into the inner npm's configuration.
    const env = cleanEnv();
    for (const key of Object.keys(env)) if (key.toLowerCase().startsWith('npm_')) delete env[key];
    this.child = spawn('npm', ['start', '--', ...args], {
      cwd: dir,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let buf = '';
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.output += d;
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('{')) this.lines.push(JSON.parse(line) as LogLine);
      }
    });
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
    }));
  }

  /** The "milterd started" line (after the build: a generous hang guard). */
  async started(): Promise<LogLine> {
    await waitFor(
      () => this.has('milterd started') || this.child.exitCode !== null || this.child.signalCode !== null,
      `milterd started; output: ${this.output}`,
      180_000,
    );
    const line = this.lines.find((l) => l.msg === 'milterd started');
    assert.ok(line, `npm exited before the daemon started: ${this.output}`);
    return line;
  }

  has(msg: string): boolean {
    return this.lines.some((l) => l.msg === msg);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/** Parent pid of `pid` (/proc/PID/stat, field 4). */
async function procStat(pid: number): Promise<{ ppid: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return { ppid: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) };
}

/**
 * Start `npm start`, open a session up to RCPT, send `stop` (which signals npm), finish the session while
 * the daemon drains, and check that it drained once and exited 0 before npm did.
 */
async function stopDuringSession(t: TestContext, stop: (npm: NpmStart) => void): Promise<void> {
  const dir = await packageCopy(t);
  // A config file, as an operator would pass it; admin off, an ephemeral loopback port.
  await writeFile(
    path.join(dir, 'milterd.yaml'),
    'listen: inet:0@127.0.0.1\nadmin: off\ndrainTimeout: 60s\n',
  );
  const npm = new NpmStart(dir, ['--config', 'milterd.yaml']);
  t.after(async () => {
    // Only the processes this test started, by pid.
    const daemonPid = npm.lines.find((l) => l.msg === 'milterd started')?.pid as number | undefined;
    if (daemonPid !== undefined && alive(daemonPid)) process.kill(daemonPid, 'SIGKILL');
    if (npm.child.exitCode === null && npm.child.signalCode === null) {
      npm.child.kill('SIGKILL');
      await npm.exited;
    }
  });
  const started = await npm.started();
  const daemonPid = started.pid as number;
  const listen = (started.listen as string[])[0] as string;

  // Checked at the end: the behaviour comes first.
  const { ppid } = await procStat(daemonPid);

  const client = await MilterClient.connect(listen);
  t.after(() => client.close());
  await client.connect(CONNECT);
  await client.helo('client.example.org');
  client.macro('envfrom', { i: 'NPMSTART' });
  assert.equal((await client.envfrom('<a@example.org>')).kind, 'continue');
  assert.equal((await client.envrcpt('<b@example.net>')).kind, 'continue');

  stop(npm);
  await waitFor(
    () =>
      npm.lines.some((l) => String(l.msg).startsWith('draining')) ||
      npm.child.exitCode !== null ||
      npm.child.signalCode !== null,
    'draining',
    30_000,
  );
  assert.ok(
    npm.lines.some((l) => String(l.msg).startsWith('draining')),
    `the daemon drains; output: ${npm.output}`,
  );
  assert.equal(npm.child.exitCode, null, 'npm waits for the daemon');

  // The session in flight runs to its end, then the daemon and npm exit cleanly.
  assert.equal((await client.data()).kind, 'continue');
  await client.eoh();
  await client.body(Buffer.from('drained through npm start\r\n'));
  client.macro('eom', { i: 'NPMSTART' });
  assert.equal((await client.eom()).reply.kind, 'continue');
  await client.quit();

  const exit = await npm.exited;
  assert.deepEqual(exit, { code: 0, signal: null }, `npm exits 0; output: ${npm.output}`);
  assert.equal(alive(daemonPid), false, 'the daemon is gone when npm has exited');
  assert.ok(npm.has('milterd stopped'));
  assert.equal(npm.has('second stop signal: exiting now'), false, 'the stop signal arrived once');
  assert.equal(npm.lines.filter((l) => String(l.msg).startsWith('draining')).length, 1);
  assert.equal(npm.lines.find((l) => l.msg === 'message passed')?.txn, 'NPMSTART');
  // How: the daemon was npm's direct child (exec: no shell left in between to swallow the signal).
  assert.equal(ppid, npm.child.pid, 'the daemon was npm’s child');
}

test('npm start: SIGTERM to npm drains the daemon, which exits 0 before npm does', async (t) => {
  await stopDuringSession(t, (npm) => npm.child.kill('SIGTERM'));
});

test('npm start: Ctrl-C (SIGINT to npm’s process group) drains the daemon once, exit 0', async (t) => {
  await stopDuringSession(t, (npm) => process.kill(-(npm.child.pid as number), 'SIGINT'));
});
