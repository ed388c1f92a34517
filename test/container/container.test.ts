/**
 * The container image, built and run with podman fully offline (../shared/docs/containers.md): the base
 * image is a local stand-in made by scripts/container-base.sh, the build uses `--pull=never` and
 * `--format docker` (keeps HEALTHCHECK). Checks: milter negotiation and a message through a published
 * port, /healthz, HEALTHCHECK, non-root user, clean stop on SIGTERM (exit code 0).
 *
 * Needs root, podman, runc and debootstrap (scripts/install-test-deps.sh). It fails, never skips, when
 * they are missing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { httpGet, ROOT } from '../cli/helpers.js';

const exec = promisify(execFile);
const IMAGE = 'localhost/milterd:container-test';
const NAME = `milterd-container-test-${process.pid}`;
let env: NodeJS.ProcessEnv = process.env;

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

after(removeContainer);

test('the image runs as a non-root user, exposes the milter and admin ports and has a HEALTHCHECK', async () => {
  const config = JSON.parse(await podman(['image', 'inspect', IMAGE, '--format', '{{json .Config}}'])) as {
    User?: string;
    ExposedPorts?: Record<string, unknown>;
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
  assert.ok(health?.Test?.join(' ').includes('/healthz'), 'HEALTHCHECK probes /healthz');
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

  await podman(['healthcheck', 'run', NAME]);
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
