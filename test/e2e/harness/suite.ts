/** One node:test suite per MTA: start it once, run every scenario file against it, stop it by pid. */
import { after, describe, test } from 'node:test';
import { E2eEnv, runScenario, type E2eOptions } from './runner.js';
import { loadScenarios, type Scenario } from './scenario.js';

export async function defineMtaSuite(
  title: string,
  options: E2eOptions,
  select: (s: Scenario) => boolean = () => true,
): Promise<void> {
  // A scenario that cannot apply to this MTA (its file says why, under `not-applicable`) is not part of
  // this MTA's suite at all; harness.test.ts checks that every scenario runs on at least one MTA.
  const scenarios = (await loadScenarios()).filter((s) => select(s) && !s.notApplicable?.[options.kind]);
  await describe(title, { concurrency: 1 }, () => {
    let env: E2eEnv | undefined;
    let startError: unknown;
    // Starting the MTA is a test of its own: if Postfix or Sendmail cannot start, it fails (and so does
    // every scenario after it) with the reason; nothing is skipped.
    test(`start a private ${options.kind} (${options.transport ?? 'inet'} milter)`, async () => {
      try {
        env = await E2eEnv.start(options);
      } catch (error) {
        startError = error;
        throw error;
      }
    });
    after(async () => {
      await env?.stop();
    });
    for (const scenario of scenarios) {
      test(`${scenario.file}: ${scenario.name}`, async () => {
        if (!env) {
          const why = startError instanceof Error ? startError.message.split('\n')[0] : 'not started';
          throw new Error(`${options.kind} is not running: ${why}`);
        }
        await runScenario(env, scenario);
      });
    }
  });
}
