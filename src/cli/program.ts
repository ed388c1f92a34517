/**
 * The `milterd` command line: the commander program and {@link runCli}, which runs one subcommand and
 * resolves with a documented exit code (see exit-codes.ts). User errors (bad options, invalid
 * configuration, an unreachable milter) print one message and no stack trace. `main.ts` is the entry.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { MilterConfigError, MilterError } from '../errors.js';
import { checkConfig } from './check-config.js';
import type { SettingOverrides } from './config.js';
import { EXIT, EXIT_CODES_HELP, type ExitCode } from './exit-codes.js';
import { health } from './health.js';
import { addSettingOptions, SETTING_KEYS } from './options.js';
import { serve } from './serve.js';
import { storeCommand } from './store-command.js';
import { addTestCommand, runTest, type TestCommandOptions } from './test-command.js';
import { addInspectCommand, runInspect, type InspectCommandOptions } from './inspect.js';

/** The package version (package.json sits three levels above dist/src/cli/). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** Settings whose value came from the command line or the environment. */
function overridesOf(cmd: Command): SettingOverrides {
  const out: SettingOverrides = {};
  for (const key of SETTING_KEYS) {
    const source = cmd.getOptionValueSource(key);
    if (source === 'cli' || source === 'env') {
      out[key] = { value: cmd.getOptionValue(key) as unknown, source: source === 'cli' ? 'cli' : 'env' };
    }
  }
  return out;
}

/** How the CLI talks to the outside world (injectable for tests). */
export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const SERVE_HELP = `
Every option can also be set by its environment variable or in the config file (YAML, field in
"config:"); precedence: command line > environment > config file > default.
Durations: 500ms, 30s, 5m, 1h, or a bare number of seconds.

Signals: SIGTERM/SIGINT drain (stop accepting, /readyz turns 503, open sessions finish at QUIT,
forced after --drain-timeout), then exit 0; a second one exits at once (1). SIGHUP reloads the config file, the policy and changed filter modules; an
invalid new file is refused with an error log and the old configuration stays in force.

Logs: JSON lines on stdout (pino). Levels: fatal, error, warn, info (start/stop/reload, one line
per message), debug (connections, decisions), trace (every command).`;

/** Build the program; `result` receives the exit code of the subcommand that ran. */
export function buildProgram(io: CliIO, result: { code: ExitCode; milterError: ExitCode }): Command {
  const version = packageVersion();
  const program = new Command('milterd')
    .description('milterd: a milter daemon for Postfix and Sendmail, and a milter test tool')
    .version(version, '-V, --version', 'print the version and exit')
    // Options after a command are that command's: `milterd test --version 2` is the offered protocol version.
    .enablePositionalOptions()
    .helpOption('-h, --help', 'show help')
    .showHelpAfterError('(run "milterd --help" or "milterd COMMAND --help" for usage)')
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .addHelpText('after', `\n${EXIT_CODES_HELP}`);

  const serveCmd = program
    .command('serve')
    .description('run the milter daemon (default policy: see "milterd check-config")')
    .addHelpText('after', SERVE_HELP);
  addSettingOptions(serveCmd).action(async () => {
    result.milterError = EXIT.LISTEN;
    result.code = await serve({
      version,
      overrides: overridesOf(serveCmd),
      configFile: serveCmd.getOptionValue('config') as string | undefined,
      stderr: io.stderr,
    });
  });

  const checkCmd = program
    .command('check-config')
    .description(
      'validate a config file (and its policy) as serve reads it, and print the effective configuration ' +
        'as JSON; accepts every serve option',
    )
    .argument('[file]', 'config file (default: --config / MILTERD_CONFIG)');
  addSettingOptions(checkCmd).action(async (file: string | undefined) => {
    result.code = await checkConfig({
      file: file ?? (checkCmd.getOptionValue('config') as string | undefined),
      overrides: overridesOf(checkCmd),
      stdout: io.stdout,
      stderr: io.stderr,
    });
  });

  const healthCmd = program
    .command('health')
    .description(
      'probe the daemon that these options, environment and config file describe (for a container ' +
        'HEALTHCHECK): GET /healthz on the admin endpoint, or with the admin endpoint off a milter ' +
        'negotiation on the first listen socket; exit 0 healthy, 1 unhealthy',
    );
  addSettingOptions(healthCmd).action(async () => {
    result.code = await health({
      overrides: overridesOf(healthCmd),
      configFile: healthCmd.getOptionValue('config') as string | undefined,
      stdout: io.stdout,
    });
  });

  const storeCmd = program
    .command('store')
    .description(
      'show what the shared policy store (Redis) holds for one client, counted as the daemons that these ' +
        'options, environment and config file describe count it: its live sessions and its messages in ' +
        "each window of the policy's rules (one JSON object); accepts every serve option",
    )
    .argument('<address>', "the client's address as the MTA reports it (IPv4, IPv6, a Unix socket path)")
    .option('--clear', 'also forget the client: its sessions and messages count from zero on every instance');
  addSettingOptions(storeCmd).action(async (address: string) => {
    result.code = await storeCommand({
      address,
      clear: storeCmd.getOptionValue('clear') === true,
      overrides: overridesOf(storeCmd),
      configFile: storeCmd.getOptionValue('config') as string | undefined,
      stdout: io.stdout,
      stderr: io.stderr,
    });
  });

  const testCmd = addTestCommand(program);
  testCmd.action(async (file: string) => {
    result.milterError = EXIT.MILTER;
    result.code = await runTest(file, testCmd.opts<TestCommandOptions>(), io.stdout, io.stderr);
  });

  const inspectCmd = addInspectCommand(program);
  inspectCmd.action(async () => {
    result.milterError = EXIT.LISTEN;
    result.code = await runInspect(inspectCmd.opts<InspectCommandOptions>(), io.stdout, io.stderr);
  });
  return program;
}

/** Parse `argv` (node-style: [node, script, ...args]) and run; resolves with the exit code. */
export async function runCli(argv: readonly string[], io: CliIO): Promise<ExitCode> {
  const result: { code: ExitCode; milterError: ExitCode } = { code: EXIT.OK, milterError: EXIT.RUNTIME };
  const program = buildProgram(io, result);
  try {
    if (argv.length <= 2) {
      program.outputHelp({ error: true });
      return EXIT.USAGE;
    }
    await program.parseAsync([...argv]);
    return result.code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander already printed its message (or the help/version text).
      return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    if (err instanceof MilterConfigError) {
      io.stderr(`milterd: ${err.message}\n`);
      const n = err.problems.length;
      if (n > 1) io.stderr(`milterd: configuration invalid: ${n} problems\n`);
      return EXIT.CONFIG;
    }
    if (err instanceof MilterError) {
      io.stderr(`milterd: ${err.message} (${err.code})\n`);
      return result.milterError;
    }
    io.stderr(
      `milterd: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    return EXIT.RUNTIME;
  }
}
