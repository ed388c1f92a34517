/**
 * Unix socket creation (src/server/listen.ts): the socket appears at its path with the requested mode and
 * group from the first moment, nothing is ever done through a symlink at the path, and nothing but the
 * socket is left behind. Setting mode and group by path after listen() had a window with the umask's
 * mode, and chmod/chown followed a symlink swapped in meanwhile.
 *
 * The window is made visible without timing: the test's chmod/chown (fs.promises, which listen.ts uses)
 * first let the event loop turn, so an fs.watch on the directory sees whatever exists at that moment,
 * like a client or an attacker racing the daemon would.
 */
import assert from 'node:assert/strict';
import { lstatSync, promises as fsp, readFileSync, renameSync, statSync, symlinkSync, watch } from 'node:fs';
import { basename, join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { isMilterError } from '../../src/errors.js';
import { createMilterServer, type MilterServer } from '../../src/server/server.js';
import { everyActionFilter } from '../helpers/filters.js';
import { RawMta } from '../helpers/raw-mta.js';
import { tempDir } from '../helpers/wait.js';

const MODE = 0o660;
const root = process.getuid?.() === 0;
/** As root a group we are not in (daemon) proves the chown; otherwise our own primary group. */
const GROUP: string | number = root ? 'daemon' : (process.getgid?.() ?? 0);
const GID = typeof GROUP === 'number' ? GROUP : groupId(GROUP);

function groupId(name: string): number {
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [n, , gid] = line.split(':');
    if (n === name) return Number(gid);
  }
  throw new Error(`group ${name} not found`);
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Make fs.promises.chmod/chown yield two event-loop turns before doing their work, so that file-system
 * events already queued (the socket appearing) reach watchers first. Restored after the test.
 */
function yieldingAttributeCalls(t: TestContext): void {
  const target = fsp as unknown as Record<'chmod' | 'chown', (...args: unknown[]) => Promise<void>>;
  for (const name of ['chmod', 'chown'] as const) {
    const real = target[name];
    target[name] = async (...args: unknown[]): Promise<void> => {
      await turn();
      await turn();
      return real.apply(fsp, args);
    };
    t.after(() => {
      target[name] = real;
    });
  }
}

/** A umask under which a fresh socket's mode (0777 & ~umask) differs from MODE. */
function knownUmask(t: TestContext): void {
  const old = process.umask(0o022);
  t.after(() => process.umask(old));
}

function newServer(t: TestContext): MilterServer {
  const server = createMilterServer({ filter: everyActionFilter(), socketMode: MODE, socketGroup: GROUP });
  t.after(() => server.close({ deadlineMs: 100 }));
  return server;
}

test('the socket appears at its path with the requested mode and group, and they never change there', async (t) => {
  knownUmask(t);
  yieldingAttributeCalls(t);
  const dir = await tempDir(t);
  const path = join(dir, 'milter.sock');
  // Every time anything happens to the path: what a client looking at it would find.
  const seen: Array<{ event: string; mode: number; gid: number } | { event: string; missing: true }> = [];
  const watcher = watch(dir, (event, name) => {
    if (name !== basename(path)) return;
    try {
      const st = lstatSync(path);
      seen.push({ event, mode: st.mode & 0o7777, gid: st.gid });
    } catch {
      seen.push({ event, missing: true });
    }
  });
  t.after(() => watcher.close());

  const server = newServer(t);
  const address = await server.listen(`unix:${path}`);
  await turn();
  await turn();
  const present = seen.filter((s) => !('missing' in s));
  assert.ok(present.length > 0, 'the watcher saw the socket appear');
  assert.deepEqual(
    present,
    present.map((s) => ({ event: s.event, mode: MODE, gid: GID })),
    `every sighting has mode ${MODE.toString(8)} and gid ${GID}: ${JSON.stringify(seen)}`,
  );
  assert.ok(lstatSync(path).isSocket());
  // Only the socket is left in the directory (the private directory it was bound in is gone).
  assert.deepEqual(await fsp.readdir(dir), ['milter.sock']);

  // It serves by its path; closing removes it, and nothing else is left.
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  assert.equal((await mta.negotiate()).kind, 'optneg');
  mta.destroy();
  await server.close({ deadlineMs: 100 });
  assert.deepEqual(await fsp.readdir(dir), []);
});

test('a symlink swapped in at the path is never followed: refused, left in place, its target untouched', async (t) => {
  knownUmask(t);
  yieldingAttributeCalls(t);
  const dir = await tempDir(t);
  const path = join(dir, 'milter.sock');
  const victim = join(dir, 'victim');
  await fsp.writeFile(victim, 'not for the MTA', { mode: 0o600 });
  const before = statSync(victim);

  // The attacker: as soon as anything appears in the directory, the path becomes a symlink to the victim
  // (a socket already at the path is moved aside, as a rename by someone with write access could).
  let swapped = false;
  const watcher = watch(dir, (_event, name) => {
    if (swapped || name === 'victim' || name === 'moved.sock') return;
    swapped = true;
    try {
      renameSync(path, join(dir, 'moved.sock'));
    } catch {
      // Nothing at the path yet.
    }
    symlinkSync(victim, path);
  });
  t.after(() => watcher.close());

  const server = newServer(t);
  const outcome: unknown = await server.listen(`unix:${path}`).catch((err: unknown) => err);
  assert.ok(swapped, 'the symlink was swapped in while listen() ran');
  const after = statSync(victim);
  assert.equal(after.mode & 0o7777, before.mode & 0o7777, "the victim's mode is unchanged");
  assert.equal(after.gid, before.gid, "the victim's group is unchanged");
  assert.ok(isMilterError(outcome, 'ERR_MILTER_SOCKET_IN_USE'), `refused: ${String(outcome)}`);
  assert.equal(await fsp.readlink(path), victim, 'the symlink is still there, not replaced');
  assert.deepEqual(server.addresses, []);
  assert.deepEqual((await fsp.readdir(dir)).sort(), ['milter.sock', 'victim'], 'no private directory left');
});

test('a symlink already at the path is refused and left alone', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'milter.sock');
  const victim = join(dir, 'victim');
  await fsp.writeFile(victim, 'x', { mode: 0o600 });
  await fsp.symlink(victim, path);
  const server = newServer(t);
  await assert.rejects(server.listen(`unix:${path}`), (err) =>
    isMilterError(err, 'ERR_MILTER_SOCKET_IN_USE'),
  );
  assert.equal(statSync(victim).mode & 0o777, 0o600);
  assert.equal(await fsp.readlink(path), victim);
  assert.deepEqual((await fsp.readdir(dir)).sort(), ['milter.sock', 'victim']);
});

test('a socket path too long for sun_path (with the private directory) is ERR_MILTER_LISTEN_SPEC; nothing is created', async (t) => {
  const dir = await tempDir(t);
  // dir/.milterd-XXXXXX/s must fit in 107 bytes: make the directory itself long enough to break that.
  const deep = join(dir, 'd'.repeat(Math.max(1, 100 - dir.length)));
  await fsp.mkdir(deep);
  const path = join(deep, 'm');
  const server = createMilterServer({ filter: everyActionFilter() });
  t.after(() => server.close({ deadlineMs: 100 }));
  await assert.rejects(server.listen(`unix:${path}`), (err) => isMilterError(err, 'ERR_MILTER_LISTEN_SPEC'));
  assert.deepEqual(await fsp.readdir(deep), []);
});
