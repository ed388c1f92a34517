/** Listening: TCP in-use and spec errors, option validation, handed-over servers, Unix socket handling. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { lstat, stat, writeFile, readFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { isMilterError } from '../../src/errors.js';
import { createMilterServer } from '../../src/server/server.js';
import { everyActionFilter } from '../helpers/filters.js';
import { RawMta } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { tempDir } from '../helpers/wait.js';

const run = promisify(execFile);

/** Leave a socket file nobody listens on: a child binds it and dies by SIGKILL (no unlink at exit). */
async function makeStaleSocket(path: string): Promise<void> {
  const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
  await run(process.execPath, ['-e', script]).catch(() => undefined); // killed: the rejection is expected
  assert.ok((await lstat(path)).isSocket(), 'the stale socket exists');
}

test('a stale socket file is replaced; the socket is removed on close', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'milter.sock');
  await makeStaleSocket(path);
  const server = createMilterServer({ filter: everyActionFilter() });
  t.after(() => server.close({ deadlineMs: 100 }));
  const address = await server.listen(`unix:${path}`);
  assert.deepEqual(address, { spec: `unix:${path}`, kind: 'unix', path });
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  assert.equal((await mta.negotiate()).kind, 'optneg');
  mta.send({ kind: 'quit' });
  await mta.closed;
  await server.close();
  await assert.rejects(lstat(path), { code: 'ENOENT' });
});

test('a socket somebody listens on is refused and left alone', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'live.sock');
  const other = net.createServer();
  t.after(() => other.close());
  await new Promise<void>((resolve) => other.listen(path, resolve));
  const server = createMilterServer({ filter: everyActionFilter() });
  t.after(() => server.close({ deadlineMs: 100 }));
  await assert.rejects(server.listen(`local:${path}`), (err) =>
    isMilterError(err, 'ERR_MILTER_SOCKET_IN_USE'),
  );
  assert.ok((await lstat(path)).isSocket(), 'the live socket is still there');
  assert.deepEqual(server.addresses, []);
});

test('a path that is not a socket is an error and is not removed', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'precious.txt');
  await writeFile(path, 'keep me');
  const server = createMilterServer({ filter: everyActionFilter() });
  t.after(() => server.close({ deadlineMs: 100 }));
  await assert.rejects(server.listen(`unix:${path}`), (err) =>
    isMilterError(err, 'ERR_MILTER_SOCKET_IN_USE'),
  );
  assert.equal(await readFile(path, 'utf8'), 'keep me');
});

test('socketMode and socketGroup are applied to the socket file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'mode.sock');
  // As root, a group we are not in (daemon) proves the chown; otherwise our own primary group by number.
  const root = process.getuid?.() === 0;
  const group: string | number = root ? 'daemon' : (process.getgid?.() ?? 0);
  const gid = typeof group === 'number' ? group : groupId(group);
  const { address } = await startServer(
    t,
    { filter: everyActionFilter(), socketMode: 0o660, socketGroup: group },
    `unix:${path}`,
  );
  const st = await stat(address.path as string);
  assert.equal(st.mode & 0o777, 0o660);
  assert.equal(st.gid, gid);
});

test('an unknown socket group fails listen with a config error and leaves no socket behind', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'group.sock');
  const server = createMilterServer({ filter: everyActionFilter(), socketGroup: 'no-such-group-milterd' });
  t.after(() => server.close({ deadlineMs: 100 }));
  await assert.rejects(server.listen(`unix:${path}`), (err) => isMilterError(err, 'ERR_MILTER_CONFIG'));
  await assert.rejects(lstat(path), { code: 'ENOENT' });
});

function groupId(name: string): number {
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [n, , gid] = line.split(':');
    if (n === name) return Number(gid);
  }
  throw new Error(`group ${name} not found`);
}

test('a TCP port already in use is ERR_MILTER_SOCKET_IN_USE', async (t) => {
  const { address } = await startServer(t, { filter: everyActionFilter() });
  const second = createMilterServer({ filter: everyActionFilter() });
  t.after(() => second.close({ deadlineMs: 100 }));
  await assert.rejects(second.listen(`inet:${address.port as number}@127.0.0.1`), (err) =>
    isMilterError(err, 'ERR_MILTER_SOCKET_IN_USE'),
  );
});

test('an invalid listen spec is ERR_MILTER_LISTEN_SPEC', async (t) => {
  const server = createMilterServer({ filter: everyActionFilter() });
  t.after(() => server.close({ deadlineMs: 100 }));
  await assert.rejects(server.listen('tcp:25'), (err) => isMilterError(err, 'ERR_MILTER_LISTEN_SPEC'));
});

test('invalid options fail at creation with ERR_MILTER_CONFIG', () => {
  for (const options of [{ maxConnections: 0 }, { timeouts: { idleMs: -1 } }, { maxDataSize: 10 }]) {
    assert.throws(
      () => createMilterServer({ filter: everyActionFilter(), ...options }),
      (err) => isMilterError(err, 'ERR_MILTER_CONFIG'),
    );
  }
});

test('an existing net.Server can be handed over, listening or not yet', async (t) => {
  for (const early of [true, false]) {
    const external = net.createServer();
    if (early) await new Promise<void>((resolve) => external.listen(0, '127.0.0.1', resolve));
    const server = createMilterServer({ filter: everyActionFilter() });
    t.after(() => server.close({ deadlineMs: 100 }));
    const listening = server.listen(external);
    if (!early) external.listen(0, '127.0.0.1');
    const address = await listening;
    assert.equal(address.kind, 'inet');
    assert.equal(address.port, (external.address() as net.AddressInfo).port);
    const mta = await RawMta.connect(address);
    t.after(() => mta.destroy());
    assert.equal((await mta.negotiate()).kind, 'optneg');
    mta.send({ kind: 'quit' });
    await mta.closed;
    await server.close();
    assert.equal(external.listening, false, 'the handed-over server is closed with the milter server');
  }
});
