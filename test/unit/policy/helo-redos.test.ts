import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';

// The policy module as built; the child imports it by URL (tests run from dist/test/unit/policy).
const policyModule = new URL('../../../src/policy/index.js', import.meta.url).href;

/**
 * Load a policy whose `when.helo` is a catastrophic-backtracking pattern, then evaluate its rule for
 * HELO names an SMTP client could send. A backtracking RegExp never finishes this (2^254 paths), so the
 * evaluation runs in a child process that is killed after a generous deadline: a hang fails the test
 * instead of hanging the suite. The deadline is not a performance assertion (the linear matcher needs
 * about a millisecond; see the step counts in linear-regex.test.ts).
 */
function evaluateInChild(pattern: string, helos: string[]): Promise<{ code: number | null; out: string }> {
  const script = `
    import { parsePolicy, createShutdownPolicy } from ${JSON.stringify(policyModule)};
    const yaml = 'rules:\\n  - name: dyn\\n    max-messages: 1\\n    when:\\n      helo: ' + JSON.stringify(${JSON.stringify(pattern)}) + '\\n';
    const policy = createShutdownPolicy(parsePolicy(yaml, 'redos.yaml'));
    const out = [];
    for (const helo of ${JSON.stringify(helos)}) {
      const v = await policy.evaluate({
        connectionId: 'c', event: 'message', client: undefined, helo, authenticated: undefined, macros: {},
        startedAt: 0, ageMs: 0, counters: { messagesAccepted: 1, messagesRejected: 0, messagesTempfailed: 0,
        messagesDiscarded: 0, messagesAborted: 0, recipientsAccepted: 0, recipientsRejected: 0, bytesReceived: 0 },
        attempts: 1, failures: 0, lastOutcome: undefined, recipient: undefined,
        clientStats: { concurrentSessions: 1, messagesInWindow: {} },
      });
      out.push(v === undefined ? 'quiet' : v.reason);
    }
    process.stdout.write(out.join(','));
  `;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', script],
      { timeout: 60_000, killSignal: 'SIGKILL' },
      (err, stdout) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout }),
    );
  });
}

for (const pattern of ['^(a+)+$', '(a|aa)+$', '^(\\w+\\s?)*$']) {
  test(`a policy with helo '${pattern}' answers for 255-byte adversarial HELOs (no event-loop stall)`, async () => {
    const { code, out } = await evaluateInChild(pattern, ['a'.repeat(254) + '!', 'a'.repeat(255)]);
    assert.equal(code, 0, 'the child finished (a backtracking matcher is still running at the deadline)');
    // The rule only applies when the HELO matches: the first HELO does not, the second does.
    assert.equal(out, 'quiet,max-messages');
  });
}
