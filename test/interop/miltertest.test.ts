/**
 * Interop with OpenDKIM's miltertest (Debian package `miltertest`), an independent libmilter-era MTA
 * simulator: it runs fixtures/miltertest/milterd.lua against a milterd server in this process and must
 * exit 0. A missing miltertest binary fails the test: interop is part of the suite, never skipped.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { Decision, type Filter } from '../../src/filter.js';
import { repoRoot } from '../helpers/captures.js';
import { memoryLogger } from '../helpers/logs.js';
import { startServer } from '../helpers/server.js';

interface Priv {
  subject: string;
}

/** The filter the Lua script expects (see the comment at the top of milterd.lua). */
function interopFilter(seen: string[]): Filter<Priv> {
  return {
    name: 'interop',
    connect(ctx, info) {
      ctx.priv = { subject: '' };
      seen.push(`connect ${info.hostname} ${info.address}`);
    },
    helo: () => undefined,
    envfrom(_ctx, sender) {
      seen.push(`envfrom ${sender}`);
    },
    envrcpt(_ctx, recipient) {
      seen.push(`envrcpt ${recipient}`);
      if (recipient === '<reject@example.net>') {
        return Decision.reject({ code: 550, xcode: '5.7.1', text: 'Recipient rejected' });
      }
      return undefined;
    },
    data: () => undefined,
    header(ctx, name, value) {
      if (name.toLowerCase() === 'subject' && ctx.priv) ctx.priv.subject = value.trim();
    },
    eoh: () => undefined,
    body: () => undefined,
    eom(ctx) {
      const subject = ctx.priv?.subject ?? '';
      seen.push(`eom ${subject}`);
      if (subject === 'reject')
        return Decision.reject({ code: 554, xcode: '5.7.1', text: 'message rejected' });
      ctx.addHeader('X-Milterd', 'checked');
      ctx.addHeader('X-Queue-Id', ctx.macro('i') ?? 'none');
      ctx.changeHeader('Subject', 1, `[milterd] ${subject}`);
      ctx.addRecipient('<extra@example.net>');
      return 'accept';
    },
    close() {
      seen.push('close');
    },
  };
}

function runMiltertest(args: string[]): Promise<{ code: number | null; output: string; error?: Error }> {
  return new Promise((resolve) => {
    let output = '';
    const child = spawn('miltertest', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', (error) => resolve({ code: null, output, error }));
    child.once('close', (code) => resolve({ code, output }));
  });
}

test('miltertest drives a scripted session against milterd and passes', async (t) => {
  const seen: string[] = [];
  const log = memoryLogger('warn');
  const { address } = await startServer(t, { filter: interopFilter(seen), logger: log.logger });
  const script = join(repoRoot(), 'fixtures', 'miltertest', 'milterd.lua');
  const result = await runMiltertest(['-s', script, '-D', `port=${address.port as number}`]);
  assert.ok(
    result.error === undefined,
    `miltertest could not run (install the Debian package: apt-get install miltertest): ${String(result.error)}`,
  );
  assert.equal(result.code, 0, `miltertest failed:\n${result.output}`);
  assert.match(result.output, /all checks passed/);
  assert.ok(seen.includes('eom interop test'), 'the accepted message reached EOM');
  assert.ok(seen.includes('eom reject'), 'the rejected message reached EOM');
  assert.equal(seen.filter((s) => s === 'close').length, 2, 'one close per miltertest connection');
  assert.deepEqual(log.coded(), [], 'no coded errors were logged');
});
