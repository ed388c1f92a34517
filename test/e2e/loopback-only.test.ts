// No packet leaves loopback: one full scenario per MTA with the MTA (and every process it forks) under
// `strace -f -e trace=connect,sendto,sendmsg,sendmmsg`; every IP address it contacts must be 127.0.0.0/8 or ::1.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { E2eEnv, runScenario } from './harness/runner.js';
import { loadScenarios } from './harness/scenario.js';
import { contactedAddresses, isLoopback } from './harness/strace.js';
import type { MtaKind } from './harness/mta.js';

const scenarios = await loadScenarios();
const FULL = ['plain.yaml', 'ipv6-client.yaml', 'eom-add-recipient.yaml'];

for (const kind of ['postfix', 'sendmail'] as MtaKind[]) {
  await test(`e2e: ${kind} under strace contacts loopback addresses only`, async () => {
    const env = await E2eEnv.start({ kind, transport: 'inet', strace: true });
    try {
      for (const scenario of scenarios.filter((s) => FULL.includes(s.file))) await runScenario(env, scenario);
      const files = env.mta?.straceFiles() ?? [];
      assert.ok(files.length > 0, 'strace wrote no file');
      const contacts = await contactedAddresses(files);
      // The trace works: the MTA's own connections to milterd and to the sink are in it.
      assert.ok(
        contacts.some((c) => c.address === '127.0.0.1'),
        `no connect to 127.0.0.1 traced in ${files.join(', ')}`,
      );
      const outside = contacts.filter((c) => !isLoopback(c.address));
      assert.deepEqual(
        outside.map((c) => `${c.address}: ${c.line}`),
        [],
        'an MTA process contacted a non-loopback address',
      );
    } finally {
      await env.stop();
    }
  });
}
