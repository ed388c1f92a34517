/**
 * examples/kubernetes/postfix-milterd-pod.yaml, checked without a cluster: the YAML is parsed and its
 * structure asserted against what milterd and the image really do.
 * - milterd is a native sidecar (an init container with `restartPolicy: Always`), Postfix a regular one;
 * - startup and readiness probes on /readyz, liveness on /healthz, all on the admin port that the
 *   ConfigMap's milterd.yaml binds (on all interfaces: the kubelet probes the pod IP);
 * - that milterd.yaml is a valid config (milterd's own parser) mounted where the image's MILTERD_CONFIG
 *   (Dockerfile) points, and no MILTERD_LISTEN/MILTERD_ADMIN in the pod overrides it;
 * - its Unix socket sits on the volume Postfix mounts where milter.cf's chroot-relative path points;
 * - the grace period is above milterd's drain timeout.
 * Then a milterd runs that very milterd.yaml (socket and admin port moved to free places on the command
 * line, which wins over the file) and the probes' paths answer as the kubelet expects.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { parseConfigText } from '../../src/cli/config.js';
import { parseSocketSpec } from '../../src/socket-spec.js';
import { Daemon, httpGet, ROOT } from '../cli/helpers.js';
import { tempDir } from '../helpers/wait.js';

const EXAMPLE = path.join(ROOT, 'examples', 'kubernetes', 'postfix-milterd-pod.yaml');

interface Probe {
  httpGet?: { path?: string; port?: string | number };
}
interface Container {
  name: string;
  restartPolicy?: string;
  args?: string[];
  command?: string[];
  env?: Array<{ name: string; value?: string }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  volumeMounts?: Array<{ name: string; mountPath: string; subPath?: string }>;
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
}
interface Volume {
  name: string;
  emptyDir?: unknown;
  configMap?: { name: string; items?: Array<{ key: string; path: string }> };
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  volumes: Volume[];
  initContainers?: Container[];
  containers: Container[];
}

async function load(): Promise<{ configMap: { data: Record<string, string> }; pod: { spec: PodSpec } }> {
  const docs = parseAllDocuments(await readFile(EXAMPLE, 'utf8'));
  assert.ok(Array.isArray(docs), 'a YAML stream');
  for (const doc of docs) assert.deepEqual(doc.errors, []);
  const objects = docs.map((d) => d.toJS() as { kind: string });
  const configMap = objects.find((o) => o.kind === 'ConfigMap');
  const pod = objects.find((o) => o.kind === 'Pod');
  assert.ok(configMap !== undefined && pod !== undefined, 'a ConfigMap and a Pod');
  return {
    configMap: configMap as unknown as { data: Record<string, string> },
    pod: pod as unknown as { spec: PodSpec },
  };
}

/** The milterd config of the ConfigMap, parsed by milterd itself (no problem allowed). */
function milterdConfig(data: Record<string, string>): ReturnType<typeof parseConfigText>['values'] {
  const text = data['milterd.yaml'];
  assert.ok(text !== undefined, 'the ConfigMap has milterd.yaml');
  const parsed = parseConfigText(text, '/etc/milterd/milterd.yaml');
  assert.deepEqual(
    parsed.problems.map((p) => p.message),
    [],
  );
  return parsed.values;
}

function milterdOf(spec: PodSpec): Container {
  const sidecar = spec.initContainers?.find((c) => c.name === 'milterd');
  assert.ok(sidecar !== undefined, 'milterd is an init container');
  return sidecar;
}

/** Where `volume` is mounted in `container` (exactly one mount). */
function mountOf(container: Container, volume: string): { mountPath: string; subPath?: string } {
  const mounts = (container.volumeMounts ?? []).filter((m) => m.name === volume);
  assert.equal(mounts.length, 1, `${container.name} mounts ${volume} once`);
  return mounts[0] as { mountPath: string; subPath?: string };
}

test('milterd is a native sidecar: an init container with restartPolicy Always; Postfix a regular container', async () => {
  const { pod } = await load();
  const sidecar = milterdOf(pod.spec);
  assert.equal(sidecar.restartPolicy, 'Always');
  assert.deepEqual(
    pod.spec.containers.map((c) => c.name),
    ['postfix'],
  );
  assert.equal(pod.spec.containers[0]?.restartPolicy, undefined);
  // The only init container: nothing else runs (or has to finish) before Postfix but milterd.
  assert.deepEqual(
    pod.spec.initContainers?.map((c) => c.name),
    ['milterd'],
  );
});

test('startup and readiness probe /readyz, liveness /healthz, on the admin port the config binds', async () => {
  const { pod, configMap } = await load();
  const config = milterdConfig(configMap.data);
  const sidecar = milterdOf(pod.spec);
  assert.ok(config.admin !== undefined && config.admin !== 'off', 'the config turns the admin endpoint on');
  const admin = parseSocketSpec(config.admin);
  assert.ok(admin.kind === 'inet');
  assert.equal(admin.host, '0.0.0.0', 'the kubelet probes the pod IP, not loopback');

  const portOf = (probe: Probe | undefined, what: string): number => {
    const port = probe?.httpGet?.port;
    assert.ok(port !== undefined, `${what} is an httpGet probe`);
    if (typeof port === 'number') return port;
    const named = sidecar.ports?.find((p) => p.name === port);
    assert.ok(named !== undefined, `${what}: port "${port}" is declared`);
    return named.containerPort;
  };
  assert.equal(sidecar.startupProbe?.httpGet?.path, '/readyz');
  assert.equal(sidecar.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(sidecar.livenessProbe?.httpGet?.path, '/healthz');
  for (const [what, probe] of [
    ['startupProbe', sidecar.startupProbe],
    ['readinessProbe', sidecar.readinessProbe],
    ['livenessProbe', sidecar.livenessProbe],
  ] as const) {
    assert.equal(portOf(probe, what), admin.port, `${what} probes the admin port`);
  }
});

test('the config is mounted where the image reads it, and nothing in the pod overrides listen or admin', async () => {
  const { pod, configMap } = await load();
  milterdConfig(configMap.data);
  const sidecar = milterdOf(pod.spec);
  const dockerfile = await readFile(path.join(ROOT, 'Dockerfile'), 'utf8');
  const configPath = /MILTERD_CONFIG=(\S+)/.exec(dockerfile)?.[1];
  assert.equal(configPath, '/etc/milterd/milterd.yaml', 'the image names its config file');

  const mount = mountOf(sidecar, 'milterd-config');
  const volume = pod.spec.volumes.find((v) => v.name === 'milterd-config');
  const item = volume?.configMap?.items?.find((i) => i.key === 'milterd.yaml');
  assert.ok(item !== undefined, 'the volume holds the ConfigMap key milterd.yaml');
  assert.equal(path.posix.join(mount.mountPath, item.path), configPath);

  // The environment (and arguments after serve) would win over the file.
  const env = (sidecar.env ?? []).map((e) => e.name);
  assert.ok(
    !env.includes('MILTERD_LISTEN') && !env.includes('MILTERD_ADMIN') && !env.includes('MILTERD_CONFIG'),
  );
  assert.equal(sidecar.args, undefined, 'the image runs `serve`');
  assert.equal(sidecar.command, undefined);
});

test("milterd's socket is on the volume Postfix mounts where milter.cf points", async () => {
  const { pod, configMap } = await load();
  const config = milterdConfig(configMap.data);
  const sidecar = milterdOf(pod.spec);
  const postfix = pod.spec.containers.find((c) => c.name === 'postfix') as Container;
  assert.equal(config.listen?.length, 1);
  const listen = parseSocketSpec(config.listen?.[0] as string);
  assert.ok(listen.kind === 'unix');

  const volume = pod.spec.volumes.find((v) => v.emptyDir !== undefined);
  assert.ok(volume !== undefined, 'an emptyDir for the socket');
  const milterdMount = mountOf(sidecar, volume.name).mountPath;
  assert.equal(path.posix.dirname(listen.path), milterdMount);

  // smtpd runs chrooted in /var/spool/postfix: unix:REL is /var/spool/postfix/REL.
  const milterCf = configMap.data['milter.cf'] ?? '';
  const rel = /^smtpd_milters = unix:(\S+)$/m.exec(milterCf)?.[1];
  assert.ok(rel !== undefined && !rel.startsWith('/'), 'a chroot-relative unix: milter');
  const postfixMount = mountOf(postfix, volume.name).mountPath;
  assert.equal(
    path.posix.join('/var/spool/postfix', rel),
    path.posix.join(postfixMount, path.posix.basename(listen.path)),
  );
  assert.match(milterCf, /^milter_default_action = tempfail$/m);
});

test('the grace period covers the drain timeout', async () => {
  const { pod, configMap } = await load();
  const config = milterdConfig(configMap.data);
  assert.ok(config.drainTimeout !== undefined);
  assert.ok((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000 > config.drainTimeout);
});

test("a milterd running the example's config answers the probes' paths", async (t) => {
  const { configMap } = await load();
  const dir = await tempDir(t);
  const file = path.join(dir, 'milterd.yaml');
  await writeFile(file, configMap.data['milterd.yaml'] as string);
  // Moved on the command line (which wins over the file): the example's paths need root.
  const daemon = new Daemon([
    '--config',
    file,
    '--listen',
    `unix:${dir}/milterd.sock`,
    '--admin',
    'inet:0@127.0.0.1',
  ]);
  t.after(() => daemon.kill());
  const { adminPort } = await daemon.started();
  assert.ok(adminPort !== undefined);
  assert.equal((await httpGet(adminPort, '/readyz')).status, 200);
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  daemon.signal('SIGTERM');
  assert.deepEqual(await daemon.exited, { code: 0, signal: null });
});
