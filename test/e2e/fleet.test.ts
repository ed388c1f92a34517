/**
 * Issue 15 acceptance, end to end on real servers: three `milterd serve` sharing one Debian redis-server
 * (`--store redis://…`), behind two private Postfix instances and one Sendmail (harness/fleet.ts). The
 * cross-session limits hold across the fleet whichever instances a client's sessions reach; Redis killed,
 * paused (SIGSTOP) and restarted never costs a message nor desynchronises an MTA, and the limits come back
 * with it; a milterd killed with -9 stops counting against its client when its leases expire.
 *
 * Every SMTP session comes from its own loopback source address (127.0.x.y): each test uses a fresh
 * client (and /24 per rule) so that no test depends on when another test's sessions were released.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { Fleet, MTA_NAMES, type MessageOutcome } from './harness/fleet.js';
import { waitFor } from './harness/proc.js';
import type { SmtpClient } from './harness/smtp-client.js';

/** Short lease life, so the -9 test waits seconds, not the default minute. Renewed every third of it. */
const LEASE_TTL_MS = 12_000;

/**
 * The policy of the whole file. 127.0.1.0/24 and 127.0.4.0/24: 2 concurrent sessions per address;
 * 127.0.2.0/24: 10 messages per address per window; 127.0.3.0/24: 2 per address (fault tests), with
 * on-store-error allow; 127.0.5.0/24: on-store-error tempfail; 127.0.6.0/24: 6 per address with
 * on-store-error local (each of the 3 instances, `--store-instances 3`, then allows 6 / 3 = 2).
 * The rate window is the minute: the store keeps a sliding log, so "10 in the last minute" is
 * exact as long as the 16 sessions of that test take less than a minute (they take a few seconds).
 */
const POLICY = `version: 1
rules:
  - name: concurrent
    max-concurrent-sessions: 2
    when: { client: [127.0.1.0/24, 127.0.4.0/24] }
  - name: per-client-rate
    max-messages-per-client: 10
    window: 1m
    when: { client: 127.0.2.0/24 }
  - name: fault-rate
    max-messages-per-client: 2
    window: 1h
    on-store-error: allow
    when: { client: 127.0.3.0/24 }
  - name: fault-tempfail
    max-messages-per-client: 100
    window: 1h
    on-store-error: tempfail
    when: { client: 127.0.5.0/24 }
  - name: fault-local
    max-messages-per-client: 6
    window: 1h
    on-store-error: local
    when: { client: 127.0.6.0/24 }
`;

/** Sendmail's milter debug lines (-d64.5) for a filter it lost step with (strings of sendmail 8.17). */
const SENDMAIL_MILTER_ERROR =
  /to error state|\): timeout|read returned|write\(.\) returned|bogus response|error connecting to filter/;

function explain(o: MessageOutcome): string {
  return `${o.kind}: ${o.reply?.text ?? '(no reply)'}\n${o.transcript.join('\n')}`;
}

async function quit(client: SmtpClient): Promise<void> {
  if (!client.isClosed) await client.command('QUIT').catch(() => undefined);
  client.close();
}

await describe(
  'fleet: three milterd on one Redis behind two Postfix and a Sendmail',
  { concurrency: 1 },
  () => {
    let fleet: Fleet | undefined;
    let startError: unknown;
    const env = (): Fleet => {
      if (fleet) return fleet;
      const why = startError instanceof Error ? startError.message.split('\n')[0] : 'not started';
      throw new Error(`the fleet is not running: ${why}`);
    };

    test('start redis-server, three milterd serve --store redis://… and the three MTAs', async () => {
      try {
        fleet = await Fleet.start({
          policyYaml: POLICY,
          storeArgs: (redis) => [
            '--store',
            redis.url,
            '--store-lease-ttl',
            `${LEASE_TTL_MS}ms`,
            '--store-instances',
            '3',
            // The default 50 ms deadline is for production. On a test machine shared with parallel builds
            // the event loop alone can lag past it, and a missed deadline means "allow": the exact counts
            // below would be flaky. The deadline path itself is taken with SIGSTOP whatever its length.
            '--store-timeout',
            '500ms',
          ],
        });
      } catch (error) {
        startError = error;
        throw error;
      }
    });
    after(async () => {
      await fleet?.stop();
    });

    /**
     * Two sessions of `from` open (EHLO + MAIL answered 250) on `order[0]` and `order[1]`, then a third on
     * `order[2]` gets the policy's 421 and is closed by its MTA; the two held sessions still deliver.
     */
    async function thirdRefused(
      f: Fleet,
      order: readonly number[],
      from: string,
      tag: string,
    ): Promise<void> {
      const held: SmtpClient[] = [];
      try {
        for (const i of order.slice(0, 2)) {
          const c = await f.connect(i, from);
          held.push(c);
          const r = await f.open(c);
          assert.equal(r.code, 250, `${tag}: session ${held.length} on ${MTA_NAMES[i]}: ${r.text}`);
        }
        const last = order[2] ?? 0;
        const third = await f.connect(last, from);
        held.push(third);
        const r = await f.open(third);
        assert.equal(
          r.code,
          421,
          `${tag}: third session on ${MTA_NAMES[last]}: ${third.transcript.join('\n')}`,
        );
        assert.match(r.text, /^421 4\.7\.0 /);
        assert.equal(await third.waitHangup(15_000), true, `${tag}: ${MTA_NAMES[last]} closes after the 421`);
        for (const [k, c] of held.slice(0, 2).entries()) {
          const done = await f.finish(c, `${tag}-${k}`);
          assert.equal(done.code, 250, `${tag}: held session ${k + 1} delivers: ${done.text}`);
          await quit(c);
        }
      } finally {
        for (const c of held) c.close();
      }
    }

    test('max-concurrent-sessions 2: the third concurrent session gets its 421 whichever instances the sessions reach', async () => {
      const f = env();
      const timeouts = await f.storeErrors('ERR_MILTER_STORE_TIMEOUT');
      // Every MTA (and so every milterd) gets the refused third session once, after two sessions on the
      // two other instances; then two sessions on one instance and the third elsewhere, and all on one.
      const orders = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 0, 2],
        [2, 2, 1],
        [1, 1, 1],
      ];
      for (const [n, order] of orders.entries()) {
        await thirdRefused(f, order, `127.0.1.${n + 1}`, `concurrent-${order.join('')}`);
      }
      await f.settle();
      const expected = orders.flatMap((o) => [`concurrent-${o.join('')}-0`, `concurrent-${o.join('')}-1`]);
      assert.deepEqual(f.delivered('concurrent-').sort(), expected.sort());
      assert.equal(
        await f.storeErrors('ERR_MILTER_STORE_TIMEOUT'),
        timeouts,
        'no store call missed its deadline',
      );
    });

    test('max-messages-per-client 10: exactly 10 accepted across the instances, the rest 421, the sink holds those 10', async () => {
      const f = env();
      const outcomes: MessageOutcome[] = [];
      // One message per SMTP session, round robin over postfix-a, postfix-b and sendmail.
      for (let k = 0; k < 16; k++) outcomes.push(await f.message(k % 3, '127.0.2.1', `rate-${k}`));
      for (const [k, o] of outcomes.entries()) {
        if (k < 10)
          assert.equal(o.kind, 'accepted', `message ${k + 1} via ${MTA_NAMES[k % 3]}: ${explain(o)}`);
        else {
          assert.equal(o.kind, '421', `message ${k + 1} via ${MTA_NAMES[k % 3]}: ${explain(o)}`);
          assert.equal(o.hangup, true, `message ${k + 1}: the MTA closes the session after the 421`);
        }
      }
      await f.settle();
      const accepted = Array.from({ length: 10 }, (_, k) => `rate-${k}`);
      assert.deepEqual(f.delivered('rate-').sort(), accepted.sort());
      // Another client of the same rule is counted on its own.
      const other = await f.message(1, '127.0.2.2', 'rate-other');
      assert.equal(other.kind, 'accepted', explain(other));
    });

    test('max-messages-per-client 10, 15 sessions of one client at the same moment on all three MTAs: exactly 10 pass and are delivered, 5 get 421', async () => {
      const f = env();
      const from = '127.0.2.3';
      // 15 SMTP sessions of one client, 5 per MTA, opened at once, then every EHLO at once and every MAIL
      // at once: a count taken after each message would let all 15 through. Each session's first message
      // is counted at its CONNECT, so the refused ones get their 421 at EHLO or at MAIL.
      const opened = await Promise.allSettled(Array.from({ length: 15 }, (_, k) => f.connect(k % 3, from)));
      const clients = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
      try {
        assert.equal(clients.length, 15, 'every session greeted');
        const ehlos = await Promise.all(clients.map((c) => c.command('EHLO burst.fleet.test')));
        const mails = await Promise.all(
          clients.map((c, k) =>
            ehlos[k]?.code === 250 ? c.command('MAIL FROM:<sender@fleet.example>') : ehlos[k],
          ),
        );
        const passed = clients.filter((_, k) => mails[k]?.code === 250);
        assert.equal(passed.length, 10, mails.map((m, k) => `${MTA_NAMES[k % 3]}: ${m?.text}`).join('\n'));
        for (const [k, m] of mails.entries()) {
          if (m?.code === 250) continue;
          assert.equal(m?.code, 421, `${MTA_NAMES[k % 3]}: ${m?.text}`);
          assert.equal(
            await clients[k]?.waitHangup(15_000),
            true,
            'the MTA closes the session after the 421',
          );
        }
        const ids = passed.map((_, j) => `burst-${j}`);
        const replies = await Promise.all(passed.map((c, j) => f.finish(c, ids[j] as string)));
        for (const r of replies) assert.equal(r.code, 250, r.text);
        for (const c of passed) await c.command('QUIT').catch(() => undefined);
        await f.settle();
        assert.deepEqual(f.delivered('burst-').sort(), [...ids].sort());
        // The window is full: the next session of the client is refused, wherever it goes.
        const next = await f.message(1, from, 'burst-next');
        assert.equal(next.kind, '421', explain(next));
      } finally {
        for (const c of clients) c.close();
      }
    });

    test('redis-server killed, paused (SIGSTOP) and restarted: every message accepted and delivered, no MTA desync, limits resume', async (t) => {
      const f = env();
      const redis = f.redisServer;
      // Whatever fails here, the next test gets a running Redis back.
      t.after(async () => {
        if (!redis.alive) await redis.restart();
      });
      const marks = await f.mtaLogMarks();
      const accepted: string[] = [];
      const unexpected: string[] = [];
      let seq = 0;
      // One long session per MTA (from 127.0.0.1: no rule limits it) carries a message in every phase: the
      // same SMTP and milter connections live through every fault.
      const long: SmtpClient[] = [];
      for (const i of [0, 1, 2]) {
        const c = await f.connect(i, '127.0.0.1');
        long.push(c);
        const ehlo = await c.command('EHLO long.fleet.test');
        assert.equal(ehlo.code, 250, ehlo.text);
      }
      const onLong = async (phase: string): Promise<void> => {
        for (const [i, c] of long.entries()) {
          const id = `fault-${phase}-long-${i}`;
          const r = await f.next(c, id);
          assert.equal(r.code, 250, `${phase}: long session on ${MTA_NAMES[i]}: ${c.transcript.join('\n')}`);
          accepted.push(id);
        }
      };
      // A client limited to 2 messages sends 6 while the store is out: on-store-error allow (the default)
      // lets every one through.
      const overLimit = async (phase: string, from: string): Promise<void> => {
        for (let k = 0; k < 6; k++) {
          const id = `fault-${phase}-${k}`;
          const o = await f.message(k % 3, from, id);
          assert.equal(
            o.kind,
            'accepted',
            `${phase}: message ${k + 1} via ${MTA_NAMES[k % 3]}: ${explain(o)}`,
          );
          accepted.push(id);
        }
      };
      // The other failure modes while the store is out: `tempfail` turns the client away with the policy's
      // 421 (a 4xx: it retries later); `local` counts on each instance alone against its share of the limit.
      const otherModes = async (phase: string, n: number): Promise<void> => {
        const t = await f.message(n % 3, `127.0.5.${n}`, `fault-${phase}-tempfail`);
        assert.equal(t.kind, '421', `${phase}: on-store-error tempfail: ${explain(t)}`);
        const local: MessageOutcome[] = [];
        for (const [k, i] of [0, 0, 0, 1].entries()) {
          const id = `fault-${phase}-local-${k}`;
          const o = await f.message(i, `127.0.6.${n}`, id);
          local.push(o);
          if (o.kind === 'accepted') accepted.push(id);
        }
        assert.deepEqual(
          local.map((o) => o.kind),
          ['accepted', 'accepted', '421', 'accepted'],
          `${phase}: on-store-error local: ${local.map(explain).join('\n')}`,
        );
      };
      // After a fault: once an instance's breaker lets a probe through, the client `net` is counted there
      // again and gets its 421 (bounded wait: the breaker's open time). Each instance in turn: a breaker
      // opens and closes on its own instance's calls, so one instance counting again says nothing of the
      // others (one still open lets a message through uncounted, as `on-store-error: allow` says). Then a
      // fresh client gets exactly its 2 messages, and a fresh client of the concurrency rule its 421 on the
      // third session.
      const limitsResume = async (phase: string, net: number): Promise<void> => {
        for (const i of [0, 1, 2]) {
          await waitFor(
            `${phase}: the fault-rate limit to apply again on ${MTA_NAMES[i]}`,
            async () => {
              const id = `fault-${phase}-probe-${seq++}`;
              const o = await f.message(i, `127.0.3.${net}`, id);
              if (o.kind === 'accepted') accepted.push(id);
              else if (o.kind !== '421') unexpected.push(`${phase} probe: ${explain(o)}`);
              return o.kind === '421' ? true : undefined;
            },
            { timeoutMs: 120_000, intervalMs: 250 },
          );
        }
        const exact: MessageOutcome[] = [];
        for (let k = 0; k < 3; k++) {
          const id = `fault-${phase}-exact-${k}`;
          const o = await f.message((k + 1) % 3, `127.0.3.${net + 1}`, id);
          exact.push(o);
          if (o.kind === 'accepted') accepted.push(id);
        }
        assert.deepEqual(
          exact.map((o) => o.kind),
          ['accepted', 'accepted', '421'],
          `${phase}: ${exact.map(explain).join('\n')}`,
        );
        await thirdRefused(f, [2, 1, 0], `127.0.1.${100 + net}`, `fault-${phase}-concurrent`);
        const t = await f.message(net % 3, `127.0.5.${net}`, `fault-${phase}-tempfail-back`);
        assert.equal(
          t.kind,
          'accepted',
          `${phase}: on-store-error tempfail client once the store is back: ${explain(t)}`,
        );
        accepted.push(`fault-${phase}-tempfail-back`);
        accepted.push(`fault-${phase}-concurrent-0`, `fault-${phase}-concurrent-1`);
      };

      const errors = async (): Promise<{ failed: number; timeout: number; unavailable: number }> => ({
        failed: await f.storeErrors('ERR_MILTER_STORE_FAILED'),
        timeout: await f.storeErrors('ERR_MILTER_STORE_TIMEOUT'),
        unavailable: await f.storeErrors('ERR_MILTER_STORE_UNAVAILABLE'),
      });
      // Every instance's breaker is closed again once the limits have come back.
      const breakersClosed = async (phase: string): Promise<void> => {
        for (const m of f.milterds) {
          assert.equal(
            await m.metric('milterd_store_breaker_state', { state: 'closed' }),
            1,
            `${phase}: milterd ${m.index} breaker`,
          );
        }
      };

      await onLong('before');
      const e0 = await errors();
      await redis.kill();
      await onLong('killed');
      await overLimit('killed', '127.0.3.1');
      await otherModes('killed', 1);
      // The store calls did fail meanwhile (refused connections, then the open breaker): the messages
      // above went through because of on-store-error allow, not because the store was never asked.
      const e1 = await errors();
      assert.ok(e1.failed + e1.unavailable > e0.failed + e0.unavailable, JSON.stringify({ e0, e1 }));
      await redis.restart();
      await onLong('restarted');
      await limitsResume('restarted', 10);
      await breakersClosed('restarted');
      const e2 = await errors();

      await redis.pause();
      try {
        await onLong('paused');
        await overLimit('paused', '127.0.3.2');
        await otherModes('paused', 2);
      } finally {
        redis.resume();
      }
      // The paused server accepted the connections and answered nothing: calls ended at their deadline.
      const e3 = await errors();
      assert.ok(e3.timeout > e2.timeout, `the deadline path was taken: ${JSON.stringify({ e2, e3 })}`);
      await limitsResume('resumed', 20);
      await breakersClosed('resumed');
      await onLong('after');
      for (const c of long) await quit(c);

      assert.deepEqual(unexpected, []);
      await f.settle();
      // Every accepted message was delivered once; nothing else (a 421'd one) was.
      assert.deepEqual(f.delivered('fault-').sort(), accepted.sort());
      // No MTA lost step with its milter: Postfix logs no milter warning, Sendmail never put it in error state.
      const [postfixA = '', postfixB = '', sendmail = ''] = await f.mtaLogsSince(marks);
      for (const [name, log] of [
        ['postfix-a', postfixA],
        ['postfix-b', postfixB],
      ] as const) {
        assert.doesNotMatch(log, /warning: milter/, `${name} maillog`);
      }
      assert.doesNotMatch(sendmail, SENDMAIL_MILTER_ERROR, 'sendmail milter debug output');
    });

    test('a milterd killed with -9: its leases stop counting within the lease TTL, its MTA tempfails and recovers', async () => {
      const f = env();
      const from = '127.0.4.1';
      const held: SmtpClient[] = [];
      const accepted: string[] = [];
      try {
        for (let k = 0; k < 2; k++) {
          const c = await f.connect(0, from);
          held.push(c);
          const r = await f.open(c);
          assert.equal(r.code, 250, `session ${k + 1} on postfix-a: ${r.text}`);
        }
        await f.milterd(0).kill9();
        // Nothing cleaned up after the dead process: its two leases still count on the other instances.
        const early = await f.message(1, from, 'kill9-early');
        assert.equal(early.kind, '421', explain(early));
        // Nobody renews them any more: within the lease TTL the client is admitted again (bounded wait).
        let n = 0;
        await waitFor(
          "the killed milterd's leases to expire",
          async () => {
            const id = `kill9-probe-${n++}`;
            const o = await f.message(1 + (n % 2), from, id);
            if (o.kind === 'accepted') accepted.push(id);
            else if (o.kind !== '421') throw new Error(explain(o));
            return o.kind === 'accepted' ? true : undefined;
          },
          { timeoutMs: LEASE_TTL_MS + 30_000, intervalMs: 250 },
        );
        // Postfix's sessions on the dead milter: milter_default_action = tempfail, the SMTP dialogue goes on.
        for (const c of held) {
          const r = await c.command('RCPT TO:<rcpt@fleet.example>');
          assert.equal(
            Math.floor(r.code / 100),
            4,
            `postfix-a without its milter: ${c.transcript.join('\n')}`,
          );
          await quit(c);
        }
      } finally {
        for (const c of held) c.close();
      }
      await f.milterd(0).start();
      const back = await f.message(0, '127.0.0.1', 'kill9-after');
      assert.equal(back.kind, 'accepted', explain(back));
      accepted.push('kill9-after');
      await f.settle();
      assert.deepEqual(f.delivered('kill9-').sort(), accepted.sort());
    });
  },
);
