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
import { describePolicy } from './policy-source.js';

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
    };
    options.stdout(JSON.stringify(doc, null, 2) + '\n');
    return EXIT.OK;
  }
  for (const p of problems) options.stderr(formatConfigProblem(p) + '\n');
  options.stderr(`configuration invalid: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n`);
  return EXIT.CONFIG;
}
