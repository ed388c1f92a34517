/**
 * The container image, built and run with podman fully offline (../shared/docs/containers.md): the base
 * image is a local stand-in for node:24-bookworm-slim made by scripts/container-base.sh, the build uses
 * `--pull=never` and `--format docker` (keeps HEALTHCHECK). Checks: Node 24 in the image, milter
 * negotiation and a message through a published port, /healthz, HEALTHCHECK, non-root user, clean stop on
 * SIGTERM (exit code 0); and the configuration precedence of the image: a mounted config file's `listen:`
 * and `admin:` apply (the image sets no MILTERD_LISTEN/MILTERD_ADMIN), the environment still wins over it,
 * and the HEALTHCHECK probes wherever the admin endpoint really is, or the milter socket when it is off.
 *
 * Needs root, podman, runc and debootstrap (scripts/install-test-deps.sh). It fails, never skips, when
 * they are missing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { httpGet, ROOT } from '../cli/helpers.js';

const exec = promisify(execFile);
// Per process: the image store is shared by every checkout on the machine.
const IMAGE = `localhost/milterd:container-test-${process.pid}`;
const NAME = `milterd-container-test-${process.pid}`;
let env: NodeJS.ProcessEnv = process.env;
const configDirs: string[] = [];

/** Run podman with the sandbox containers.conf; resolves with stdout, rejects with stderr in the message. */
async function podman(args: string[], timeoutMs = 300_000): Promise<string> {
  try {
    const { stdout } = await exec('podman', args, { env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; code?: unknown };
    throw new Error(`podman ${args.join(' ')} failed (${String(e.code)}): ${e.stderr ?? String(err)}`, {
      cause: err,
    });
  }
}

/** A free loopback TCP port (bound then released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function removeContainer(): Promise<void> {
  await podman(['rm', '-f', '-t', '0', NAME]).catch(() => undefined);
}

/** A directory holding `milterd.yaml` with `text`, readable by the container's user (uid 1000). */
async function configDir(text: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'milterd-container-'));
  configDirs.push(dir);
  await chmod(dir, 0o755);
  await writeFile(path.join(dir, 'milterd.yaml'), text, { mode: 0o644 });
  return dir;
}

/**
 * Start the container with `extra` options, publishing each container port in `ports` on a free loopback
 * port; resolves with container port -> host port.
 */
async function runContainer(ports: number[], extra: string[] = []): Promise<Map<number, number>> {
  const published = new Map<number, number>();
  const args = ['run', '-d', '--name', NAME];
  for (const p of ports) {
    const host = await freePort();
    published.set(p, host);
    args.push('-p', `127.0.0.1:${host}:${p}`);
  }
  await podman([...args, ...extra, IMAGE]);
  return published;
}

/** Bounded wait until the daemon has logged its start line (the listeners are bound after it). */
async function waitStarted(): Promise<string> {
  let logs = '';
  for (let i = 0; i < 80 && !logs.includes('"msg":"milterd started"'); i++) {
    await new Promise((r) => setTimeout(r, 250));
    logs = await podman(['logs', NAME]).catch(() => '');
    if (!logs.includes('"msg":"milterd started"')) {
      const state = await podman(['inspect', NAME, '--format', '{{.State.Status}}']).catch(() => '');
      if (state === 'exited') break;
    }
  }
  assert.match(logs, /"msg":"milterd started"/, `milterd did not start: ${logs}`);
  return logs;
}

/** A milter negotiation through a published port succeeds. */
async function negotiates(port: number): Promise<void> {
  const client = await MilterClient.connect(`inet:${port}@127.0.0.1`, { timeoutMs: 5_000 });
  try {
    assert.equal(client.negotiated.version, 6);
  } finally {
    await client.quit().catch(() => client.close());
  }
}

/** Nothing answers behind a published port: the connection is refused or reset, no milter greets. */
async function nothingListens(port: number): Promise<void> {
  await assert.rejects(MilterClient.connect(`inet:${port}@127.0.0.1`, { timeoutMs: 5_000 }));
  await assert.rejects(httpGet(port, '/healthz'));
}

interface HealthLog {
  ExitCode: number;
  Output: string;
}

/** Run the image's HEALTHCHECK once; its exit code and what it printed (the health log's last entry). */
async function healthcheck(): Promise<HealthLog> {
  const code = await podman(['healthcheck', 'run', NAME]).then(
    () => 0,
    () => 1,
  );
  const state = JSON.parse(await podman(['inspect', NAME, '--format', '{{json .State.Health}}'])) as {
    Log?: HealthLog[];
  };
  const last = state.Log?.at(-1);
  assert.ok(last !== undefined, 'the health log has an entry');
  assert.equal(last.ExitCode, code);
  return { ExitCode: last.ExitCode, Output: last.Output };
}

/** Stop the daemon's process (SIGSTOP from the host), run `fn`, then let it continue. */
async function whileStopped(fn: () => Promise<void>): Promise<void> {
  await podman(['kill', '--signal', 'STOP', NAME]);
  try {
    await fn();
  } finally {
    await podman(['kill', '--signal', 'CONT', NAME]);
  }
}

before(async () => {
  // Missing tools are a failure with a clear message, not a skip.
  await exec('podman', ['--version']).catch((err: unknown) => {
    throw new Error('podman is not installed (apt-get install podman runc debootstrap)', { cause: err });
  });
  const { stdout } = await exec('bash', [`${ROOT}scripts/container-base.sh`], { timeout: 600_000 }).catch(
    (err: unknown) => {
      throw new Error(
        `scripts/container-base.sh failed: ${(err as { stderr?: string }).stderr ?? String(err)}`,
        {
          cause: err,
        },
      );
    },
  );
  const conf = stdout.trim().split('\n').pop() ?? '';
  assert.match(conf, /containers\.conf$/);
  env = { ...process.env, CONTAINERS_CONF: conf };
  await removeContainer();
  await podman(['build', '--pull=never', '--format', 'docker', '-t', IMAGE, ROOT], 600_000);
});

after(async () => {
  await removeContainer();
  await podman(['rmi', '-f', IMAGE]).catch(() => undefined);
  for (const dir of configDirs) await rm(dir, { recursive: true, force: true });
});

test('the image runs Node 24 as a non-root user, exposes the milter and admin ports and has a HEALTHCHECK', async () => {
  const config = JSON.parse(await podman(['image', 'inspect', IMAGE, '--format', '{{json .Config}}'])) as {
    User?: string;
    ExposedPorts?: Record<string, unknown>;
    Env?: string[];
  };
  const health = JSON.parse(
    await podman(['image', 'inspect', IMAGE, '--format', '{{json .Config.Healthcheck}}']),
  ) as {
    Test?: string[];
  } | null;
  assert.ok(
    config.User !== undefined && !['', 'root', '0'].includes(config.User) && !config.User.startsWith('0:'),
  );
  assert.deepEqual(Object.keys(config.ExposedPorts ?? {}).sort(), ['8890/tcp', '9900/tcp']);
  assert.deepEqual(health?.Test, ['CMD', 'node', 'bin/milterd.js', 'health']);
  // The defaults are a config file, not environment variables that would win over a mounted one.
  const milterdEnv = (config.Env ?? []).filter((e) => e.startsWith('MILTERD_'));
  assert.deepEqual(milterdEnv, ['MILTERD_CONFIG=/etc/milterd/milterd.yaml']);
  const node = await podman(['run', '--rm', '--entrypoint', 'node', IMAGE, '--version']);
  assert.match(node, /^v24\.\d+\.\d+$/);
});

test('the container answers a milter negotiation and /healthz, and stops cleanly on SIGTERM', async () => {
  const milterPort = await freePort();
  const adminPort = await freePort();
  await podman([
    'run',
    '-d',
    '--name',
    NAME,
    '-p',
    `127.0.0.1:${milterPort}:8890`,
    '-p',
    `127.0.0.1:${adminPort}:9900`,
    IMAGE,
  ]);

  // Bounded wait until the admin endpoint answers.
  let health: { status: number; body: string } | undefined;
  for (let i = 0; i < 60 && health?.status !== 200; i++) {
    health = await httpGet(adminPort, '/healthz').catch(() => undefined);
    if (health?.status !== 200) await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(health?.status, 200, `no /healthz: ${await podman(['logs', NAME]).catch(() => '')}`);
  assert.equal((await httpGet(adminPort, '/readyz')).status, 200);

  const client = await MilterClient.connect(`inet:${milterPort}@127.0.0.1`);
  try {
    assert.equal(client.negotiated.version, 6);
    const result = await playMessage(client, {
      connect: { hostname: 'client.example.org', family: 'inet', port: 40000, address: '192.0.2.30' },
      helo: 'client.example.org',
      sender: '<a@example.org>',
      recipients: ['<b@example.net>'],
      headers: [['Subject', 'container']],
      body: 'hello\r\n',
    });
    assert.equal(result.stoppedAt, 'eom');
    assert.deepEqual(
      result.eom?.modifications.map((m) => m.kind),
      ['addHeader'],
    );
  } finally {
    await client.quit().catch(() => client.close());
  }

  assert.deepEqual(await healthcheck(), {
    ExitCode: 0,
    Output: 'healthy: GET http://127.0.0.1:9900/healthz: 200',
  });
  const uid = await podman(['exec', NAME, 'id', '-u']);
  assert.notEqual(uid, '0', 'runs as non-root');
  assert.equal(uid, '1000');

  await podman(['stop', '-t', '20', NAME]);
  const state = JSON.parse(await podman(['inspect', NAME, '--format', '{{json .State}}'])) as {
    ExitCode: number;
    Status: string;
  };
  assert.equal(state.ExitCode, 0, 'exit code 0 after SIGTERM');
  const logs = await podman(['logs', NAME]);
  assert.match(logs, /"msg":"milterd stopped"/);
  assert.match(logs, /"signal":"SIGTERM"/);
});

test('a mounted config file sets listen and admin; the HEALTHCHECK probes its admin port', async (t) => {
  await removeContainer();
  t.after(removeContainer);
  const dir = await configDir('listen: inet:7001@0.0.0.0\nadmin: inet:7002@0.0.0.0\nlogLevel: info\n');
  const ports = await runContainer([7001, 7002, 8890, 9900], ['-v', `${dir}:/etc/milterd:ro`]);
  const logs = await waitStarted();
  assert.match(logs, /"listen":\["inet:7001@0\.0\.0\.0"\]/);

  await negotiates(ports.get(7001) as number);
  assert.equal((await httpGet(ports.get(7002) as number, '/healthz')).status, 200);
  assert.equal((await httpGet(ports.get(7002) as number, '/readyz')).status, 200);
  // The image's own ports are not bound: nothing in the image overrides the file.
  await nothingListens(ports.get(8890) as number);
  await nothingListens(ports.get(9900) as number);

  assert.deepEqual(await healthcheck(), {
    ExitCode: 0,
    Output: 'healthy: GET http://127.0.0.1:7002/healthz: 200',
  });
  assert.equal(await podman(['inspect', NAME, '--format', '{{.State.Health.Status}}']), 'healthy');
  // A daemon that does not answer is unhealthy (the probe is real, not a constant).
  await whileStopped(async () => {
    assert.deepEqual(await healthcheck(), {
      ExitCode: 1,
      Output: `unhealthy: GET http://127.0.0.1:7002/healthz: no answer within 2000 ms`,
    });
  });
  assert.equal((await healthcheck()).ExitCode, 0);
});

test('the environment still wins over the config file (MILTERD_ADMIN), and the HEALTHCHECK follows it', async (t) => {
  await removeContainer();
  t.after(removeContainer);
  const ports = await runContainer([8890, 9900, 7003], ['-e', 'MILTERD_ADMIN=inet:7003@0.0.0.0']);
  await waitStarted();
  await negotiates(ports.get(8890) as number); // listen: from the image's file
  assert.equal((await httpGet(ports.get(7003) as number, '/healthz')).status, 200);
  await nothingListens(ports.get(9900) as number);
  assert.deepEqual(await healthcheck(), {
    ExitCode: 0,
    Output: 'healthy: GET http://127.0.0.1:7003/healthz: 200',
  });
});

test('admin: off in a mounted config: no admin port, and the HEALTHCHECK negotiates on the milter socket', async (t) => {
  await removeContainer();
  t.after(removeContainer);
  const dir = await configDir('listen: inet:7001@0.0.0.0\nadmin: off\n');
  const ports = await runContainer([7001, 9900], ['-v', `${dir}:/etc/milterd:ro`]);
  const logs = await waitStarted();
  assert.doesNotMatch(logs, /admin endpoint listening/);
  await negotiates(ports.get(7001) as number);
  await nothingListens(ports.get(9900) as number);

  assert.deepEqual(await healthcheck(), {
    ExitCode: 0,
    Output: 'healthy: admin endpoint off; milter negotiation on inet:7001@0.0.0.0: version 6',
  });
  assert.equal(await podman(['inspect', NAME, '--format', '{{.State.Health.Status}}']), 'healthy');
  await whileStopped(async () => {
    const stopped = await healthcheck();
    assert.equal(stopped.ExitCode, 1);
    assert.match(
      stopped.Output,
      /^unhealthy: admin endpoint off; milter negotiation on inet:7001@0\.0\.0\.0: /,
    );
  });
  assert.equal((await healthcheck()).ExitCode, 0);

  // The health probes are connections like any other: the daemon still stops cleanly.
  await podman(['stop', '-t', '20', NAME]);
  assert.equal(await podman(['inspect', NAME, '--format', '{{.State.ExitCode}}']), '0');
});
