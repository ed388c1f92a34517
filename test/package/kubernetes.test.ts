/**
 * examples/kubernetes/postfix-milterd-pod.yaml and fleet.yaml, checked without a cluster: the YAML is parsed
 * and its structure asserted against what milterd and the image really do. For the Pod, and for the pod
 * template of the fleet's MTA Deployment:
 * - milterd is a native sidecar (an init container with `restartPolicy: Always`), Postfix a regular one;
 * - startup and readiness probes on /readyz, liveness on /healthz, all on the admin port that the
 *   ConfigMap's milterd.yaml binds (on all interfaces: the kubelet probes the pod IP);
 * - that milterd.yaml is a valid config (milterd's own parser) mounted where the image's MILTERD_CONFIG
 *   (Dockerfile) points, and no MILTERD_LISTEN/MILTERD_ADMIN in the pod overrides it;
 * - its Unix socket sits on the volume Postfix mounts where milter.cf's chroot-relative path points;
 * - the grace period is above milterd's drain timeout.
 * Then a milterd runs that very milterd.yaml (socket and admin port moved to free places on the command
 * line, which wins over the file) and the probes' paths answer as the kubelet expects.
 * The fleet besides: its MILTERD_STORE comes from the Secret and is a Redis URL naming the Redis Service
 * with the password Redis is started with; `milterd check-config` accepts the config with that store;
 * the policy counts on the store (fleet-wide rules, each with on-store-error); replicas = store.instances;
 * a real redis-server runs with the Redis Deployment's arguments and the Secret's URL counts on it; the
 * docs/policy.md block is the ConfigMap's milterd.yaml.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { parseConfigText } from '../../src/cli/config.js';
import { createRedisPolicyStore } from '../../src/policy/redis-store.js';
import { parseStoreUrl } from '../../src/policy/store-url.js';
import { parseSocketSpec } from '../../src/socket-spec.js';
import { Daemon, httpGet, ROOT, runMilterd } from '../cli/helpers.js';
import { RedisServer, redisCommand } from '../helpers/redis.js';
import { tempDir } from '../helpers/wait.js';

const POD = path.join(ROOT, 'examples', 'kubernetes', 'postfix-milterd-pod.yaml');
const FLEET = path.join(ROOT, 'examples', 'kubernetes', 'fleet.yaml');
/** Each example and where its MTA pod spec is: a Pod, or the pod template of the Deployment `mail`. */
const EXAMPLES = [
  { file: POD, name: 'postfix-milterd-pod.yaml' },
  { file: FLEET, name: 'fleet.yaml' },
] as const;

interface Probe {
  httpGet?: { path?: string; port?: string | number };
}
interface Container {
  name: string;
  image?: string;
  resources?: { limits?: { memory?: string } };
  restartPolicy?: string;
  args?: string[];
  command?: string[];
  env?: Array<{
    name: string;
    value?: string;
    valueFrom?: { secretKeyRef?: { name: string; key: string } };
  }>;
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

interface K8sObject {
  kind: string;
  metadata: { name: string; namespace?: string };
}
interface Deployment extends K8sObject {
  spec: { replicas?: number; selector: { matchLabels: Record<string, string> }; template: { spec: PodSpec } };
}

async function objectsOf(file: string): Promise<K8sObject[]> {
  const docs = parseAllDocuments(await readFile(file, 'utf8'));
  assert.ok(Array.isArray(docs), 'a YAML stream');
  for (const doc of docs) assert.deepEqual(doc.errors, []);
  return docs.map((d) => d.toJS() as K8sObject);
}

/** The milterd ConfigMap and the MTA pod spec (the Pod's, or the Deployment `mail`'s template). */
async function load(
  file: string,
): Promise<{ configMap: { data: Record<string, string> }; pod: { spec: PodSpec } }> {
  const objects = await objectsOf(file);
  const configMap = objects.find((o) => o.kind === 'ConfigMap');
  const pod = objects.find((o) => o.kind === 'Pod');
  const deployment = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'mail') as
    Deployment | undefined;
  assert.ok(configMap !== undefined, 'a ConfigMap');
  assert.ok((pod === undefined) !== (deployment === undefined), 'a Pod or a Deployment `mail`');
  return {
    configMap: configMap as unknown as { data: Record<string, string> },
    pod:
      pod !== undefined
        ? (pod as unknown as { spec: PodSpec })
        : { spec: (deployment as Deployment).spec.template.spec },
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

for (const example of EXAMPLES) {
  test(
    `${example.name}: ` +
      'milterd is a native sidecar: an init container with restartPolicy Always; Postfix a regular container',
    async () => {
      const { pod } = await load(example.file);
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
    },
  );

  test(
    `${example.name}: ` +
      'startup and readiness probe /readyz, liveness /healthz, on the admin port the config binds',
    async () => {
      const { pod, configMap } = await load(example.file);
      const config = milterdConfig(configMap.data);
      const sidecar = milterdOf(pod.spec);
      assert.ok(
        config.admin !== undefined && config.admin !== 'off',
        'the config turns the admin endpoint on',
      );
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
    },
  );

  test(
    `${example.name}: ` +
      'the config is mounted where the image reads it, and nothing in the pod overrides listen or admin',
    async () => {
      const { pod, configMap } = await load(example.file);
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
    },
  );

  test(
    `${example.name}: ` + "milterd's socket is on the volume Postfix mounts where milter.cf points",
    async () => {
      const { pod, configMap } = await load(example.file);
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
    },
  );

  test(`${example.name}: ` + 'the grace period covers the drain timeout', async () => {
    const { pod, configMap } = await load(example.file);
    const config = milterdConfig(configMap.data);
    assert.ok(config.drainTimeout !== undefined);
    assert.ok((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000 > config.drainTimeout);
  });

  test(
    `${example.name}: ` + "a milterd running the example's config answers the probes' paths",
    async (t) => {
      const { configMap } = await load(example.file);
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
    },
  );
}

interface Secret extends K8sObject {
  stringData: Record<string, string>;
}

/** The fleet's objects by kind and name, and the milterd sidecar's MILTERD_STORE, resolved from its Secret. */
async function fleet(): Promise<{
  objects: K8sObject[];
  mail: Deployment;
  redis: Deployment;
  storeUrl: string;
  secret: Secret;
}> {
  const objects = await objectsOf(FLEET);
  const named = <T extends K8sObject>(kind: string, name: string): T => {
    const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
    assert.equal(found.length, 1, `one ${kind} ${name}`);
    return found[0] as T;
  };
  const mail = named<Deployment>('Deployment', 'mail');
  const redis = named<Deployment>('Deployment', 'redis');
  const env = milterdOf(mail.spec.template.spec).env ?? [];
  const store = env.find((e) => e.name === 'MILTERD_STORE');
  const ref = store?.valueFrom?.secretKeyRef;
  assert.ok(ref !== undefined && store?.value === undefined, 'MILTERD_STORE comes from a Secret, not inline');
  const secret = named<Secret>('Secret', ref.name);
  const storeUrl = secret.stringData[ref.key];
  assert.ok(storeUrl !== undefined, `the Secret has ${ref.key}`);
  return { objects, mail, redis, storeUrl, secret };
}

test('fleet.yaml: MILTERD_STORE is a Redis URL naming the Redis Service, with the password Redis requires', async () => {
  const { objects, redis, storeUrl, secret } = await fleet();
  const location = parseStoreUrl(storeUrl);
  assert.ok(location.kind === 'redis' && location.mode === 'standalone', 'a redis:// store');
  assert.equal(location.tls, false);
  assert.equal(location.db, 0);
  // Every object in one namespace; the URL names the Service by its cluster DNS name in it.
  const namespaces = new Set(objects.map((o) => o.metadata.namespace));
  assert.equal(namespaces.size, 1);
  const [namespace] = [...namespaces];
  assert.ok(namespace !== undefined);
  const service = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'redis') as
    | (K8sObject & {
        spec: { selector: Record<string, string>; ports: Array<{ port: number; targetPort: string }> };
      })
    | undefined;
  assert.ok(service !== undefined, 'a Service redis');
  assert.deepEqual(location.node, { host: `redis.${namespace}.svc`, port: service.spec.ports[0]?.port });
  assert.deepEqual(
    service.spec.selector,
    redis.spec.selector.matchLabels,
    'the Service selects the Redis pods',
  );
  // Redis is started with --requirepass from the same Secret's password: the URL carries that password.
  const container = redis.spec.template.spec.containers.find((c) => c.name === 'redis');
  assert.ok(container !== undefined);
  assert.match(container.image ?? '', /^redis:7(\.|$)/);
  assert.ok(container.resources?.limits?.memory !== undefined, 'a memory limit');
  const args = container.args ?? [];
  const pass = args[args.indexOf('--requirepass') + 1];
  const variable = /^\$\((\w+)\)$/.exec(pass ?? '')?.[1];
  const passEnv = (container.env ?? []).find((e) => e.name === variable)?.valueFrom?.secretKeyRef;
  assert.deepEqual(passEnv?.name, secret.metadata.name);
  assert.equal(location.password, secret.stringData[passEnv?.key ?? '']);
  assert.equal(location.username, undefined, 'the default user');
  // Counters only: no persistence.
  assert.equal(args[args.indexOf('--save') + 1], '');
  assert.equal(args[args.indexOf('--appendonly') + 1], 'no');
  // The Redis port the Service targets is the one the container declares.
  const port = (container.ports ?? []).find((p) => p.name === service.spec.ports[0]?.targetPort);
  assert.equal(port?.containerPort, 6379);
});

test('fleet.yaml: the policy counts on the store, with on-store-error, and replicas = store.instances', async () => {
  const { mail } = await fleet();
  const { configMap } = await load(FLEET);
  const config = milterdConfig(configMap.data);
  assert.ok(mail.spec.replicas !== undefined && mail.spec.replicas > 1, 'several MTA pods');
  assert.equal(config.storeInstances, mail.spec.replicas);
  assert.equal(config.store, undefined, 'the URL with its password is not in the ConfigMap');
  // Inline policy: every rule is a cross-session limit (the ones the store shares) with its on-store-error.
  const policy = config.policy as { kind: string; value?: { rules?: Array<Record<string, unknown>> } };
  assert.equal(policy.kind, 'inline');
  const rules = policy.value?.rules ?? [];
  assert.deepEqual(rules.map((r) => Object.keys(r).find((k) => k.startsWith('max-'))).sort(), [
    'max-concurrent-sessions',
    'max-messages-per-client',
  ]);
  for (const rule of rules)
    assert.ok(['allow', 'tempfail', 'local'].includes(rule['on-store-error'] as string));
  assert.ok(
    rules.some((r) => r['on-store-error'] === 'local'),
    'one rule divides its limit by store.instances',
  );
});

test("fleet.yaml: `milterd check-config` accepts the ConfigMap's milterd.yaml with the Secret's store", async (t) => {
  const { storeUrl } = await fleet();
  const { configMap } = await load(FLEET);
  const dir = await tempDir(t);
  const file = path.join(dir, 'milterd.yaml');
  await writeFile(file, configMap.data['milterd.yaml'] as string);
  const r = await runMilterd(['check-config', file], { env: { MILTERD_STORE: storeUrl } });
  assert.equal(r.stderr, '');
  assert.equal(r.code, 0);
  const report = JSON.parse(r.stdout) as {
    config: { store: { url: string; instances: number } };
    sources: Record<string, string>;
    policy: { rules: Array<{ name: string; limit: string }> };
  };
  assert.equal(report.sources['store.url'], 'env');
  assert.equal(report.config.store.url, 'redis://:***@redis.mail.svc:6379/0', 'the password is redacted');
  assert.equal(report.config.store.instances, 3);
  assert.deepEqual(report.policy.rules.map((r) => r.limit).sort(), [
    'max-concurrent-sessions',
    'max-messages-per-client',
  ]);
});

test("fleet.yaml: docs/policy.md's fleet block is the ConfigMap's milterd.yaml, verbatim, and links the file", async () => {
  const { configMap } = await load(FLEET);
  const doc = await readFile(path.join(ROOT, 'docs', 'policy.md'), 'utf8');
  const section = doc.slice(doc.indexOf('**A fleet.**'));
  assert.ok(section.length < doc.length, 'docs/policy.md has the fleet paragraph');
  assert.match(section, /\(\.\.\/examples\/kubernetes\/fleet\.yaml\)/);
  const block = /```yml\n([\s\S]*?)```/.exec(section)?.[1];
  assert.equal(block, configMap.data['milterd.yaml']);
});

test("fleet.yaml: redis-server runs with the Deployment's arguments, and the Secret's URL counts on it", async (t) => {
  const { redis, storeUrl, secret } = await fleet();
  const container = redis.spec.template.spec.containers.find((c) => c.name === 'redis');
  assert.ok(container !== undefined);
  // $(VAR) is the kubelet's expansion of the container's env, here from the Secret.
  const env = new Map(
    (container.env ?? []).map((e) => [e.name, secret.stringData[e.valueFrom?.secretKeyRef?.key ?? ''] ?? '']),
  );
  const args = (container.args ?? []).map((a) =>
    a.replace(/\$\((\w+)\)/g, (_, v: string) => env.get(v) ?? ''),
  );
  const server = await RedisServer.start({ args });
  t.after(() => server.stop());
  // The Secret's URL, with the Service's name and port replaced by where this server listens.
  const local = storeUrl.replace(/@[^/]+\//, `@127.0.0.1:${server.port}/`);
  assert.notEqual(local, storeUrl);
  const store = await createRedisPolicyStore({ url: local, prefix: 'k8s:' });
  t.after(() => store.close());
  await store.ready();
  assert.equal(await store.sessionOpened('192.0.2.1', 's1'), 1);
  assert.equal(await store.addMessage('192.0.2.1', 60_000), 1);
  await store.sessionClosed('192.0.2.1', 's1');
  // Without the password Redis refuses: the password in the URL is the one that counted.
  assert.match(await redisCommand(server.port, 'PING'), /^-NOAUTH/);
});
