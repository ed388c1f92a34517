/**
 * Fairness: peers pipelining thousands of commands do not starve a healthy session. Measured in commands,
 * not time: every header callback appends to one global sequence, and the test counts how many flood
 * commands ran between two consecutive commands of the healthy session.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Filter } from '../../src/filter.js';
import { encodeCommands } from '../../src/protocol/encode.js';
import type { MilterCommand } from '../../src/protocol/types.js';
import { connectionDebugStats } from '../../src/server/connection-stats.js';
import { TURN_COMMANDS } from '../../src/server/fairness.js';
import { RawMta } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';

const FLOODERS = 4;
const FLOOD_FRAMES = 20_000;
const HEALTHY_HEADERS = 30;

const envelope = (hostname: string): MilterCommand[] => [
  { kind: 'connect', hostname, family: 'inet', port: 25, address: '192.0.2.1' },
  { kind: 'mail', sender: '<s@example.org>', args: [] },
  { kind: 'rcpt', recipient: '<r@example.net>', args: [] },
];

for (const sharedReadBuffer of [true, false]) {
  const mode = sharedReadBuffer ? 'shared reads' : 'stream reads';
  test(`${mode}: pipelining peers get a bounded share of the loop between two commands of a healthy session`, async (t) => {
    // true: a healthy command, false: a flood command, in the order the server handled them.
    const order: boolean[] = [];
    const filter: Filter = {
      connect() {},
      envfrom() {},
      envrcpt() {},
      header(ctx) {
        order.push(ctx.connection?.hostname === 'healthy');
      },
    };
    const { address } = await startServer(t, { filter, sharedReadBuffer });
    const flooders = await Promise.all(Array.from({ length: FLOODERS }, () => RawMta.connect(address)));
    const healthy = await RawMta.connect(address);
    t.after(() => [...flooders, healthy].forEach((m) => m.destroy()));
    for (const [i, mta] of [...flooders, healthy].entries()) {
      await mta.negotiate();
      mta.send(...envelope(i < FLOODERS ? `flood-${i}` : 'healthy'));
      for (let r = 0; r < 3; r++) assert.equal((await mta.next())?.kind, 'continue');
    }
    const flood = encodeCommands(
      Array.from({ length: FLOOD_FRAMES }, (): MilterCommand => ({
        kind: 'header',
        name: 'X-F',
        value: 'f',
      })),
    );
    const yieldsBefore = connectionDebugStats.turnYields;

    healthy.send({ kind: 'header', name: 'X-H', value: 'first' });
    assert.equal((await healthy.next())?.kind, 'continue');
    for (const mta of flooders) mta.sendBytes(flood); // all at once, never waiting for a reply
    for (let i = 1; i < HEALTHY_HEADERS; i++) {
      healthy.send({ kind: 'header', name: 'X-H', value: String(i) });
      assert.equal((await healthy.next())?.kind, 'continue');
    }

    const gaps: number[] = [];
    let run = 0;
    let seenHealthy = false;
    for (const isHealthy of order) {
      if (!isHealthy) run++;
      else {
        if (seenHealthy) gaps.push(run);
        seenHealthy = true;
        run = 0;
      }
    }
    assert.equal(gaps.length, HEALTHY_HEADERS - 1);
    const flooded = order.filter((h) => !h).length;
    assert.ok(flooded > 0, 'the flood ran while the healthy session did');
    // Each flooder handles at most 2 x TURN_COMMANDS per event-loop turn, and a healthy round trip takes
    // a couple of turns. Before, a flooder ran a whole 64 KiB read (~4,600 of these frames) at once,
    // libuv handing it up to 32 reads in a row.
    const bound = FLOODERS * 2 * TURN_COMMANDS * 4;
    const worst = Math.max(...gaps);
    assert.ok(worst <= bound, `${worst} flood commands ran between two healthy ones (bound ${bound})`);
    assert.ok(connectionDebugStats.turnYields > yieldsBefore, 'flooders yielded');
  });
}
