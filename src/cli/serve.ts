/**
 * `milterd serve`: the daemon. Owns the process globals the library never touches: signal handlers
 * (SIGTERM/SIGINT drain, SIGHUP reload) and the exit code.
 */
import type { Logger } from 'pino';
import { DaemonMetrics } from '../admin/observer.js';
import { ADMIN_LISTENER, startAdminServer, type AdminServer, type ReadinessState } from '../admin/server.js';
import { GuardedStore } from '../policy/guarded-store.js';
import { isMilterError, MilterConfigError } from '../errors.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import {
  openSyslog,
  parseSyslogTarget,
  SyslogUnavailableError,
  type SyslogOutput,
} from '../logging/syslog.js';
import type { ShutdownPolicy } from '../policy/index.js';
import { createMilterServer, type MilterServer } from '../server/server.js';
import {
  formatConfigProblem,
  loadConfiguration,
  type ResolvedSettings,
  type SettingOverrides,
} from './config.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { createDaemonLogger, syslogText } from './log-output.js';
import type { DaemonSettings } from './options.js';
import { buildPolicy, describePolicy } from './policy-source.js';
import { buildDaemonPipeline, type BuildPipelineContext } from './filter-modules.js';
import { ReloadableFilter } from './reloadable-filter.js';
import { loadReloadOffThread } from './reload-worker.js';
import { openPolicyStore } from './store-source.js';

/** What `serve` is started with. */
export interface ServeOptions {
  version: string;
  /** Settings from the command line and the environment (they win over the file). */
  overrides: SettingOverrides;
  /** `--config` / MILTERD_CONFIG. */
  configFile: string | undefined;
  /** Write a line to stderr (config problems before the logger exists). */
  stderr: (line: string) => void;
}

/** Longest wait at exit for buffered log lines to be written (a stalled stdout must not hold the exit). */
const LOG_FLUSH_TIMEOUT_MS = 5_000;

/** Settings a reload cannot change: a restart is needed. */
const RESTART_ONLY: ReadonlyArray<keyof DaemonSettings> = [
  'listen',
  'socketMode',
  'socketGroup',
  'logPretty',
  'logBuffer',
  'logSyslog',
  'logSyslogFacility',
  'logSyslogFormat',
  'maxConnections',
  'maxConnectionsPerPeer',
  'backlog',
  'sharedReadBuffer',
  'timeoutNegotiate',
  'timeoutFrame',
  'timeoutIdle',
  'timeoutCallback',
  'failureDecision',
  'drainTimeout',
  'admin',
  'adminMaxConnections',
  // The store (and its counts) is carried over a reload; a new one needs a restart.
  'store',
  'storePrefix',
  'storeTimeout',
  'storeLeaseTtl',
  'storeBatchInterval',
  'storeHashAddresses',
  'storeInstances',
  'storeReadyz',
  'storeTlsCa',
  'storeTlsCert',
  'storeTlsKey',
];

/** What building the pipeline takes from the daemon. */
function pipelineContext(
  version: string,
  settings: DaemonSettings,
  logger: Logger,
  metrics: DaemonMetrics,
): BuildPipelineContext {
  return { logger, metrics, stampHeader: `milterd ${version}`, failureDecision: settings.failureDecision };
}

/** The running daemon's mutable state. */
class Daemon {
  private stopping: Promise<ExitCode> | undefined;
  private reloading: Promise<void> = Promise.resolve();
  admin: AdminServer | undefined;

  constructor(
    private settings: DaemonSettings,
    private policy: ShutdownPolicy,
    private readonly options: ServeOptions,
    readonly logger: Logger,
    readonly metrics: DaemonMetrics,
    readonly filter: ReloadableFilter,
    readonly server: MilterServer,
  ) {}

  get draining(): boolean {
    return this.stopping !== undefined;
  }

  readiness(): ReadinessState {
    const store = this.policy.store;
    return {
      listening: this.server.addresses.length >= this.settings.listen.length,
      draining: this.draining || this.server.draining,
      connections: this.server.connectionCount,
      maxConnections: this.settings.maxConnections,
      // Only when asked for (store.readyz): by default a Redis outage must not take MTAs' milters away.
      ...(this.settings.storeReadyz && store instanceof GuardedStore
        ? { store: store.breakerState !== 'open' }
        : {}),
    };
  }

  /** SIGTERM/SIGINT: stop accepting, wait for sessions to QUIT (forced after the drain timeout). */
  stop(signal: string): Promise<ExitCode> {
    this.stopping ??= (async () => {
      this.metrics.draining.set(1);
      this.logger.info(
        { signal, connections: this.server.connectionCount, drainTimeoutMs: this.settings.drainTimeout },
        'draining: no new connections, waiting for open sessions to finish',
      );
      await this.server.close({ deadlineMs: this.settings.drainTimeout });
      await this.admin?.close();
      // Sessions have closed (their leases released): now the store's connections can go.
      await this.policy.store.close?.();
      this.metrics.stop();
      this.logger.info({ signal }, 'milterd stopped');
      return EXIT.OK;
    })();
    return this.stopping;
  }

  /** SIGHUP: re-read the config file and the policy; keep the old ones when anything is invalid. */
  reload(): Promise<void> {
    this.reloading = this.reloading.then(() => this.reloadNow());
    return this.reloading;
  }

  private async reloadNow(): Promise<void> {
    if (this.draining) return;
    let next: ResolvedSettings;
    let members: string[];
    try {
      // Parsed in a worker: the milter keeps answering while a large file is read (reload-worker.ts).
      const { overrides, configFile } = this.options;
      const loaded = await loadReloadOffThread({ overrides, configFile });
      next = loaded.resolved;
      const config = loaded.policy;
      const policy = buildPolicy(config, {
        logger: this.logger,
        metrics: this.metrics,
        logLimiter: this.policy.logLimiter,
        store: this.policy.store,
      });
      // Modules are imported here, on the daemon's thread (changed files afresh); any problem refuses
      // the whole reload and the running pipeline stays.
      const built = await buildDaemonPipeline(
        next.settings.filters,
        policy,
        pipelineContext(this.options.version, this.settings, this.logger, this.metrics),
      );
      this.filter.replace(built.filter);
      this.policy = policy;
      members = built.members.map((m) => m.name);
    } catch (err) {
      this.metrics.reloads.inc({ result: 'error' });
      this.metrics.configLoaded(false);
      const where =
        err instanceof MilterConfigError ? { file: err.file, line: err.line, field: err.field } : {};
      this.logger.error({ err, ...where }, 'reload refused: the previous configuration stays in force');
      return;
    }
    const changed = RESTART_ONLY.filter(
      (k) => JSON.stringify(next.settings[k]) !== JSON.stringify(this.settings[k]),
    );
    if (changed.length > 0) {
      this.logger.warn({ settings: changed }, 'reload: these settings only take effect after a restart');
    }
    this.logger.level = next.settings.logLevel;
    const kept: Partial<DaemonSettings> = {};
    for (const k of RESTART_ONLY) (kept as Record<string, unknown>)[k] = this.settings[k];
    this.settings = { ...next.settings, ...kept };
    this.metrics.reloads.inc({ result: 'ok' });
    this.metrics.configLoaded(true);
    this.logger.info(
      {
        policy: describePolicy(next.settings.policy),
        rules: this.policy.list(),
        filters: members,
        logLevel: this.settings.logLevel,
      },
      'configuration reloaded',
    );
  }
}

/**
 * Start `--log-syslog`. A missing socket or `logger` command is a configuration problem (exit 3, before
 * anything listens): mail must not flow while the operator believes it is logged.
 */
async function startSyslog(
  settings: DaemonSettings,
  onDrop: (lines: number) => void,
  log: () => Logger | undefined,
): Promise<SyslogOutput> {
  try {
    return await openSyslog({
      target: parseSyslogTarget(settings.logSyslog),
      facility: settings.logSyslogFacility,
      format: settings.logSyslogFormat,
      describe: syslogText,
      maxBufferBytes: settings.logBuffer,
      onDrop,
      onRecovered: (dropped) =>
        log()?.warn({ dropped }, 'log lines were dropped: syslog did not take them fast enough'),
      onExit: (code, stderr) =>
        log()?.error(
          { code, stderr, syslog: settings.logSyslog },
          'syslog output stopped: logger exited; lines for syslog are dropped from now on',
        ),
    });
  } catch (err) {
    if (!(err instanceof SyslogUnavailableError)) throw err;
    throw new MilterConfigError(`--log-syslog ${err.message}`, { field: 'logSyslog' }, { cause: err });
  }
}

/**
 * Run the daemon until SIGTERM/SIGINT. Resolves with the exit code. Configuration problems found before
 * the logger exists are thrown as MilterConfigError (main prints them, exit 3).
 */
export async function serve(options: ServeOptions): Promise<ExitCode> {
  // Every problem of the config file and the policy at once, as check-config lists them.
  const loaded = await loadConfiguration(options.overrides, options.configFile);
  if (loaded.problems.length > 0 || loaded.policy === undefined) {
    throw MilterConfigError.of(loaded.problems, formatConfigProblem);
  }
  const { settings } = loaded.resolved;
  const policyConfig = loaded.policy;
  const metrics = new DaemonMetrics({ version: options.version });
  metrics.maxConnections.set(settings.maxConnections);
  const onDrop = (lines: number): void => metrics.logLinesDropped.inc({ output: 'stdout' }, lines);
  // Set once the logger exists; syslog's own events are logged through it (to stdout and syslog).
  const root: { logger?: Logger } = {};
  const syslog =
    settings.logSyslog === 'off'
      ? undefined
      : await startSyslog(
          settings,
          (lines) => metrics.logLinesDropped.inc({ output: 'syslog' }, lines),
          () => root.logger,
        );
  if (syslog !== undefined) metrics.logLinesDropped.init({ output: 'syslog' });
  const { logger, destination } = createDaemonLogger({
    level: settings.logLevel,
    pretty: settings.logPretty,
    maxBufferBytes: settings.logBuffer,
    onDrop,
    ...(syslog === undefined ? {} : { syslog }),
  });
  root.logger = logger;
  // One limit for every line a peer can cause, milter listeners and admin endpoint alike.
  const logLimiter = new LogRateLimiter({ logger });
  const store = await openPolicyStore(settings, { logger, metrics, tls: loaded.storeTls });
  const policy = buildPolicy(policyConfig, {
    logger,
    metrics,
    logLimiter,
    ...(store === undefined ? {} : { store }),
  });
  let built: Awaited<ReturnType<typeof buildDaemonPipeline>>;
  try {
    built = await buildDaemonPipeline(
      settings.filters,
      policy,
      pipelineContext(options.version, settings, logger, metrics),
    );
  } catch (err) {
    // A module that does not load is a configuration problem (exit 3), printed as one located line.
    metrics.stop();
    await policy.store.close?.();
    await Promise.all([destination.drain(LOG_FLUSH_TIMEOUT_MS), syslog?.close(LOG_FLUSH_TIMEOUT_MS)]);
    if (err instanceof MilterConfigError) throw MilterConfigError.of([err], formatConfigProblem);
    throw err;
  }
  const filter = new ReloadableFilter(built.filter);
  const server = createMilterServer({
    filter: filter.filter,
    logger,
    observer: metrics.observer,
    logLimiter,
    maxConnections: settings.maxConnections,
    maxConnectionsPerPeer: settings.maxConnectionsPerPeer,
    backlog: settings.backlog,
    sharedReadBuffer: settings.sharedReadBuffer,
    failureDecision: settings.failureDecision,
    timeouts: {
      negotiateMs: settings.timeoutNegotiate,
      frameMs: settings.timeoutFrame,
      idleMs: settings.timeoutIdle,
      callbackMs: settings.timeoutCallback,
    },
    ...(settings.socketMode === undefined ? {} : { socketMode: settings.socketMode }),
    ...(settings.socketGroup === undefined ? {} : { socketGroup: settings.socketGroup }),
  });
  const daemon = new Daemon(settings, policy, options, logger, metrics, filter, server);

  const fatal = (err: unknown, code: ExitCode, msg: string): ExitCode => {
    logger.fatal({ err }, msg);
    return code;
  };
  // Handlers go in before anything listens: a stop signal during start-up must drain, not kill.
  let resolveExit: (code: ExitCode) => void = () => undefined;
  const exited = new Promise<ExitCode>((resolve) => (resolveExit = resolve));
  const finish = (code: ExitCode): void => {
    process.off('SIGTERM', onStop).off('SIGINT', onStop).off('SIGHUP', onHup);
    process.off('uncaughtException', onCrash).off('unhandledRejection', onCrash);
    logLimiter.flush();
    // The last lines ('milterd stopped') are still buffered: write them, but never wait forever for a
    // stalled reader.
    void Promise.all([destination.drain(LOG_FLUSH_TIMEOUT_MS), syslog?.close(LOG_FLUSH_TIMEOUT_MS)]).then(
      () => resolveExit(code),
    );
  };
  const onStop = (signal: NodeJS.Signals): void => {
    if (daemon.draining) {
      logger.warn({ signal }, 'second stop signal: exiting now');
      finish(EXIT.RUNTIME);
      return;
    }
    void daemon.stop(signal).then(finish, (err: unknown) => finish(fatal(err, EXIT.RUNTIME, 'drain failed')));
  };
  const onHup = (): void => {
    logger.info('SIGHUP: reloading configuration');
    void daemon.reload();
  };
  const onCrash = (err: unknown): void => finish(fatal(err, EXIT.RUNTIME, 'uncaught error'));
  process.on('SIGTERM', onStop).on('SIGINT', onStop).on('SIGHUP', onHup);
  process.on('uncaughtException', onCrash).on('unhandledRejection', onCrash);

  try {
    for (const spec of settings.listen) await server.listen(spec);
    if (settings.admin !== 'off') {
      daemon.admin = await startAdminServer({
        listen: settings.admin,
        logger,
        logLimiter,
        maxConnections: settings.adminMaxConnections,
        onAcceptError: (code) => metrics.observer.acceptError?.(ADMIN_LISTENER, code),
        readiness: () => daemon.readiness(),
        metrics: () => metrics.scrape(),
      });
      logger.info({ admin: daemon.admin.address }, 'admin endpoint listening');
    }
  } catch (err) {
    // Stopped while starting: the drain in progress decides the exit code.
    if (daemon.draining) return exited;
    await server.close({ deadlineMs: 0 });
    const code =
      isMilterError(err) || (err as NodeJS.ErrnoException).code !== undefined ? EXIT.LISTEN : EXIT.RUNTIME;
    options.stderr(`milterd: cannot listen: ${err instanceof Error ? err.message : String(err)}\n`);
    finish(fatal(err, code, 'cannot listen'));
    return exited;
  }
  logger.info(
    {
      version: options.version,
      listen: server.addresses.map((a) => a.spec),
      policy: describePolicy(settings.policy),
      rules: policy.list(),
      filters: built.members.map((m) => m.name),
    },
    'milterd started',
  );
  return exited;
}
