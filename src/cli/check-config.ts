/**
 * `milterd check-config [FILE]`: validate a configuration file (and the policy it names) exactly as
 * `serve` would read it, with the same command-line options and environment, and print the effective
 * configuration as JSON — or every problem of the config file and the policy, in file order, as
 * `FILE:LINE:COLUMN: field: message`.
 */
import {
  formatConfigProblem,
  loadConfiguration,
  settingsToConfigObject,
  type SettingOverrides,
} from './config.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { SETTING_KEYS, SETTINGS } from './options.js';
import { DaemonMetrics } from '../admin/observer.js';
import { DEFAULTS } from '../defaults.js';
import { formatDuration } from './values.js';
import { MilterConfigError } from '../errors.js';
import { silentLogger } from '../logging/logger.js';
import { buildDaemonPipeline } from './filter-modules.js';
import { memberToConfigObject, type MemberSpec } from './pipeline-config.js';
import { buildPolicy, describePolicy } from './policy-source.js';
import type { PolicyConfig } from '../policy/index.js';
import type { DaemonSettings } from './options.js';

/** Inputs of {@link checkConfig}. */
export interface CheckConfigOptions {
  /** The file to check (positional argument, else `--config`/MILTERD_CONFIG); undefined: no file. */
  file: string | undefined;
  overrides: SettingOverrides;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

/**
 * Check and print. Resolves with 0 (valid; JSON on stdout) or 3 (invalid; one line per problem on stderr).
 * The JSON has `file`, `config` (config-file shaped: feeding it back gives the same settings), `sources`
 * (cli, env, file or default for each setting) and `policy` (its source and rule names).
 */
export async function checkConfig(options: CheckConfigOptions): Promise<ExitCode> {
  const { resolved, policy, problems } = await loadConfiguration(options.overrides, options.file);
  if (problems.length === 0 && policy !== undefined) {
    const loadProblem = await checkMembers(resolved.settings, policy);
    if (loadProblem !== undefined) problems.push(loadProblem);
  }
  if (problems.length === 0 && policy !== undefined) {
    const sources: Record<string, string> = {};
    for (const key of SETTING_KEYS) sources[SETTINGS[key].path.join('.')] = resolved.sources[key];
    const doc = {
      file: resolved.configFile ?? null,
      config: settingsToConfigObject(resolved.settings),
      sources,
      policy: {
        source: describePolicy(resolved.settings.policy),
        dryRun: policy.dryRun,
        rules: policy.rules.map((r) => ({
          name: r.name,
          limit: r.limit.kind,
          ...(r.dryRun ? { dryRun: true } : {}),
        })),
      },
      pipeline: describePipeline(resolved.settings.filters),
    };
    options.stdout(JSON.stringify(doc, null, 2) + '\n');
    return EXIT.OK;
  }
  for (const p of problems) options.stderr(formatConfigProblem(p) + '\n');
  options.stderr(`configuration invalid: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n`);
  return EXIT.CONFIG;
}

/**
 * Load the members as `serve` would (modules imported, factories called with a silent logger and a
 * throwaway registry, conditions parsed): a module that would make `serve` exit 3 fails here too.
 */
async function checkMembers(
  settings: DaemonSettings,
  config: PolicyConfig,
): Promise<MilterConfigError | undefined> {
  const metrics = new DaemonMetrics({ version: 'check-config' });
  try {
    const logger = silentLogger;
    const policy = buildPolicy(config, { logger, metrics });
    await buildDaemonPipeline(settings.filters, policy, {
      logger,
      metrics,
      stampHeader: 'milterd',
      failureDecision: settings.failureDecision,
    });
    return undefined;
  } catch (err) {
    if (err instanceof MilterConfigError) return err;
    throw err;
  } finally {
    metrics.stop();
  }
}

/**
 * The effective pipeline, members in order: what each is, its condition, dry-run, and for upstreams the
 * timeouts, failure action and breaker in force (defaults filled in).
 */
export function describePipeline(members: readonly MemberSpec[]): Array<Record<string, unknown>> {
  return members.map((m) => {
    const out = memberToConfigObject(m);
    const where = m.where.file === undefined ? m.where.field : `${m.where.file}:${m.where.line ?? 0}`;
    if (m.kind === 'upstream') {
      // The values in force: the member's own, else the upstream defaults (src/defaults.ts).
      const t = out.timeouts as Record<string, string> | undefined;
      out.timeouts = {
        connect: t?.connect ?? formatDuration(DEFAULTS.upstreamConnectMs),
        command: t?.command ?? formatDuration(DEFAULTS.upstreamCommandMs),
        eom: t?.eom ?? formatDuration(DEFAULTS.upstreamEomMs),
      };
      out['on-failure'] = m.onFailure ?? DEFAULTS.upstreamOnFailure;
      out.breaker = {
        failures: m.breaker?.failures ?? DEFAULTS.breakerFailures,
        open: formatDuration(m.breaker?.openMs ?? DEFAULTS.breakerOpenMs),
      };
    }
    return { ...out, from: where };
  });
}
