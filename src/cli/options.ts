/**
 * The daemon's settings, one table: command-line flag, environment variable, config-file field,
 * default, and parser. `milterd serve --help`, the config file reader and the README are all driven by it.
 * Precedence is command line > environment > config file > default.
 */
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULTS } from '../defaults.js';
import { parseStoreUrl } from '../policy/store-url.js';
import type { FailureDecision } from '../session/types.js';
import {
  FAILURE_DECISIONS,
  LOG_LEVELS,
  parseAdmin,
  parseBoolean,
  parseByteSize,
  formatDuration,
  parseDuration,
  parseFailureDecision,
  parseGroup,
  parseInteger,
  parseListenList,
  parseLogLevel,
  parseSocketMode,
  parseSyslog,
  parseSyslogFacility,
  parseSyslogFormat,
  type LogLevel,
} from './values.js';
import {
  appendMembers,
  defaultMembers,
  parseFilterArg,
  parseFiltersValue,
  parseUpstreamArg,
  type MemberSpec,
  type PositionOf,
} from './pipeline-config.js';
import {
  DEFAULT_SYSLOG_SOCKET,
  SYSLOG_FACILITIES,
  SYSLOG_FORMATS,
  type SyslogFacility,
  type SyslogFormat,
} from '../logging/syslog.js';

/** Where the shutdown policy comes from. */
export type PolicySetting =
  | { kind: 'default' }
  | { kind: 'file'; path: string }
  | {
      kind: 'inline';
      value: unknown;
      file: string;
      line: number | undefined;
      /** The config file text with everything but the policy blanked out, so policy errors keep their lines. */
      source: string;
    };

/** Everything `milterd serve` needs, fully resolved. Durations are in milliseconds. */
export interface DaemonSettings {
  listen: string[];
  socketMode: number | undefined;
  socketGroup: string | number | undefined;
  logLevel: LogLevel;
  logPretty: boolean;
  /** Bytes of log lines buffered while stdout is not read; beyond them lines are dropped. */
  logBuffer: number;
  /** Syslog target spec (`unix:/dev/log`, `udp:HOST:PORT`), or `off`. */
  logSyslog: string;
  logSyslogFacility: SyslogFacility;
  logSyslogFormat: SyslogFormat;
  maxConnections: number;
  maxConnectionsPerPeer: number;
  backlog: number;
  sharedReadBuffer: boolean;
  timeoutNegotiate: number;
  timeoutFrame: number;
  timeoutIdle: number;
  timeoutCallback: number;
  failureDecision: FailureDecision;
  drainTimeout: number;
  /** Admin endpoint spec, or `off`. */
  admin: string;
  adminMaxConnections: number;
  policy: PolicySetting;
  /** Policy store URL: `memory` (in-process) or a Redis URL (policy/store-url.ts). */
  store: string;
  /** Prefix of every store key. */
  storePrefix: string;
  /** Deadline of one store call (ms). */
  storeTimeout: number;
  /** Life of a session lease that is not renewed (ms). */
  storeLeaseTtl: number;
  storeBatchInterval: number;
  /** Store a hash of the client address in keys instead of the address. */
  storeHashAddresses: boolean;
  /** milterd instances sharing the store (`on-store-error: local` divides limits by it). */
  storeInstances: number;
  /** /readyz fails while the store's circuit breaker is open. */
  storeReadyz: boolean;
  /** PEM file of the CAs a TLS store's certificate is checked against (default: Node's CAs). */
  storeTlsCa: string | undefined;
  /** PEM file of the client certificate shown to a TLS store (with storeTlsKey). */
  storeTlsCert: string | undefined;
  /** PEM file of the client certificate's private key. */
  storeTlsKey: string | undefined;
  /** The pipeline's members, in order (default: the built-in stamp alone). */
  filters: MemberSpec[];
}

/** Where one resolved value came from. */
export type SettingSource = 'cli' | 'env' | 'file' | 'default';

/** One row of the settings table. */
export interface SettingDef<T> {
  /** Commander flags. */
  flags: string;
  /** Environment variable (read through commander's `Option.env`). */
  env: string;
  /** Path of the field in the YAML config file. */
  path: readonly string[];
  /** Help text without the default. */
  description: string;
  /** Value of the flag given without its argument (flags with an optional `[arg]`). */
  preset?: string;
  /** The default value and how `--help` shows it. */
  defaultValue: T;
  defaultText: string;
  /** Parse a command-line or environment value; `previous` is set for repeated flags. */
  fromText(text: string, previous: T | undefined): T;
  /**
   * Parse a config-file value; `where` locates it (inline policies keep it for their own errors;
   * `positionOf` finds the line and column of a path below the value).
   */
  fromFile(value: unknown, where: { file: string; line: number | undefined; positionOf: PositionOf }): T;
  /**
   * A second flag (with its own environment variable) that adds to the same value: `--upstream` next to
   * `--filter`, so both keep their command-line order.
   */
  alias?: {
    flags: string;
    env: string;
    description: string;
    fromText(text: string, previous: T | undefined): T;
  };
}

type SettingsTable = { [K in keyof DaemonSettings]: SettingDef<DaemonSettings[K]> };

/** Default listen spec: loopback only; containers pass `inet:8890@0.0.0.0`. */
export const DEFAULT_LISTEN: string = DEFAULTS.listen;

const same =
  <T>(parse: (v: unknown) => T) =>
  (text: string): T =>
    parse(text);

/** The table. Keys are commander's attribute names and the settings' names. */
export const SETTINGS: SettingsTable = {
  listen: {
    flags: '-l, --listen <spec>',
    env: 'MILTERD_LISTEN',
    path: ['listen'],
    description:
      'socket to listen on: inet:PORT@HOST, inet6:PORT@[HOST] or unix:/path; repeat for several ' +
      '(env: comma-separated)',
    defaultValue: [DEFAULT_LISTEN],
    defaultText: DEFAULT_LISTEN,
    fromText: (text, previous) => [...(previous ?? []), ...parseListenList(text)],
    fromFile: (value) => parseListenList(value),
  },
  socketMode: {
    flags: '--socket-mode <octal>',
    env: 'MILTERD_SOCKET_MODE',
    path: ['socketMode'],
    description: 'file mode of unix sockets, e.g. 0660',
    defaultValue: undefined,
    defaultText: 'umask',
    fromText: same(parseSocketMode),
    fromFile: parseSocketMode,
  },
  socketGroup: {
    flags: '--socket-group <group>',
    env: 'MILTERD_SOCKET_GROUP',
    path: ['socketGroup'],
    description: 'group (name or gid) of unix sockets, e.g. postfix',
    defaultValue: undefined,
    defaultText: "the process's group",
    fromText: same(parseGroup),
    fromFile: parseGroup,
  },
  logLevel: {
    flags: '--log-level <level>',
    env: 'MILTERD_LOG_LEVEL',
    path: ['logLevel'],
    description: `log level: ${LOG_LEVELS.join(', ')}`,
    defaultValue: 'info',
    defaultText: 'info',
    fromText: same(parseLogLevel),
    fromFile: parseLogLevel,
  },
  logPretty: {
    flags: '--log-pretty [bool]',
    env: 'MILTERD_LOG_PRETTY',
    path: ['logPretty'],
    description: 'human-readable log lines instead of JSON',
    defaultValue: false,
    defaultText: 'false',
    fromText: same(parseBoolean),
    fromFile: parseBoolean,
  },
  logBuffer: {
    flags: '--log-buffer <bytes>',
    env: 'MILTERD_LOG_BUFFER',
    path: ['logBuffer'],
    description:
      'log lines buffered while stdout is not read (e.g. 1MiB, 256KiB); beyond it lines are dropped and ' +
      'counted, never waited for',
    defaultValue: DEFAULTS.logBufferBytes,
    defaultText: `${DEFAULTS.logBufferBytes / 1024 ** 2}MiB`,
    fromText: same(parseByteSize),
    fromFile: parseByteSize,
  },
  logSyslog: {
    flags: '--log-syslog [target]',
    env: 'MILTERD_LOG_SYSLOG',
    path: ['logSyslog'],
    description:
      `also send log lines to syslog: unix:/path (the flag alone: ${DEFAULT_SYSLOG_SOCKET}), udp:HOST:PORT, ` +
      'or off; lines syslog does not take in time are dropped and counted, never waited for',
    preset: DEFAULT_SYSLOG_SOCKET,
    defaultValue: 'off',
    defaultText: 'off',
    fromText: same(parseSyslog),
    fromFile: parseSyslog,
  },
  logSyslogFacility: {
    flags: '--log-syslog-facility <name>',
    env: 'MILTERD_LOG_SYSLOG_FACILITY',
    path: ['logSyslogFacility'],
    description: `syslog facility: ${Object.keys(SYSLOG_FACILITIES).join(', ')}`,
    defaultValue: 'mail',
    defaultText: 'mail',
    fromText: same(parseSyslogFacility),
    fromFile: parseSyslogFacility,
  },
  logSyslogFormat: {
    flags: '--log-syslog-format <format>',
    env: 'MILTERD_LOG_SYSLOG_FORMAT',
    path: ['logSyslogFormat'],
    description: `syslog message format: ${SYSLOG_FORMATS.join(' (what local syslog daemons expect), ')}`,
    defaultValue: 'rfc3164',
    defaultText: 'rfc3164',
    fromText: same(parseSyslogFormat),
    fromFile: parseSyslogFormat,
  },
  maxConnections: {
    flags: '--max-connections <n>',
    env: 'MILTERD_MAX_CONNECTIONS',
    path: ['maxConnections'],
    description: 'milter connections served at once; more are closed at accept',
    defaultValue: DEFAULTS.maxConnections,
    defaultText: String(DEFAULTS.maxConnections),
    fromText: same((v) => parseInteger(v, 1)),
    fromFile: (v) => parseInteger(v, 1),
  },
  maxConnectionsPerPeer: {
    flags: '--max-connections-per-peer <n>',
    env: 'MILTERD_MAX_CONNECTIONS_PER_PEER',
    path: ['maxConnectionsPerPeer'],
    description:
      'milter connections served at once from one IP address (unix sockets are not counted); 0: no limit',
    defaultValue: DEFAULTS.maxConnectionsPerPeer,
    defaultText: String(DEFAULTS.maxConnectionsPerPeer),
    fromText: same((v) => parseInteger(v, 0)),
    fromFile: (v) => parseInteger(v, 0),
  },
  backlog: {
    flags: '--backlog <n>',
    env: 'MILTERD_BACKLOG',
    path: ['backlog'],
    description: 'listen(2) backlog: connections the kernel queues before milterd accepts them',
    defaultValue: DEFAULTS.backlog,
    defaultText: String(DEFAULTS.backlog),
    fromText: same((v) => parseInteger(v, 1)),
    fromFile: (v) => parseInteger(v, 1),
  },
  sharedReadBuffer: {
    flags: '--shared-read-buffer [bool]',
    env: 'MILTERD_SHARED_READ_BUFFER',
    path: ['sharedReadBuffer'],
    description: 'read every connection into one shared buffer (less CPU); false: ordinary stream reads',
    defaultValue: DEFAULTS.sharedReadBuffer,
    defaultText: String(DEFAULTS.sharedReadBuffer),
    fromText: same(parseBoolean),
    fromFile: parseBoolean,
  },
  timeoutNegotiate: {
    flags: '--timeout-negotiate <duration>',
    env: 'MILTERD_TIMEOUT_NEGOTIATE',
    path: ['timeouts', 'negotiate'],
    description: 'time the MTA has to send its option negotiation after connecting',
    defaultValue: DEFAULTS.daemonNegotiateMs,
    defaultText: formatDuration(DEFAULTS.daemonNegotiateMs),
    fromText: same(parseDuration),
    fromFile: parseDuration,
  },
  timeoutFrame: {
    flags: '--timeout-frame <duration>',
    env: 'MILTERD_TIMEOUT_FRAME',
    path: ['timeouts', 'frame'],
    description: 'time the MTA has to finish a packet it started sending (0: none)',
    defaultValue: DEFAULTS.frameMs,
    defaultText: formatDuration(DEFAULTS.frameMs),
    fromText: same(parseDuration),
    fromFile: parseDuration,
  },
  timeoutIdle: {
    flags: '--timeout-idle <duration>',
    env: 'MILTERD_TIMEOUT_IDLE',
    path: ['timeouts', 'idle'],
    description: 'longest silence between two MTA commands before the connection is dropped (0: none)',
    defaultValue: DEFAULTS.daemonIdleMs,
    defaultText: formatDuration(DEFAULTS.daemonIdleMs),
    fromText: same(parseDuration),
    fromFile: parseDuration,
  },
  timeoutCallback: {
    flags: '--timeout-callback <duration>',
    env: 'MILTERD_TIMEOUT_CALLBACK',
    path: ['timeouts', 'callback'],
    description: 'time budget of one filter callback before the failure decision is sent (0: none)',
    defaultValue: DEFAULTS.callbackMs,
    defaultText: formatDuration(DEFAULTS.callbackMs),
    fromText: same(parseDuration),
    fromFile: parseDuration,
  },
  failureDecision: {
    flags: '--failure-decision <kind>',
    env: 'MILTERD_FAILURE_DECISION',
    path: ['failureDecision'],
    description: `decision sent when the filter fails: ${FAILURE_DECISIONS.join(', ')}`,
    defaultValue: DEFAULTS.failureDecision,
    defaultText: DEFAULTS.failureDecision,
    fromText: same(parseFailureDecision),
    fromFile: parseFailureDecision,
  },
  drainTimeout: {
    flags: '--drain-timeout <duration>',
    env: 'MILTERD_DRAIN_TIMEOUT',
    path: ['drainTimeout'],
    description: 'on SIGTERM/SIGINT, how long open sessions may run to QUIT before they are closed',
    defaultValue: DEFAULTS.drainMs,
    defaultText: formatDuration(DEFAULTS.drainMs),
    fromText: same(parseDuration),
    fromFile: parseDuration,
  },
  admin: {
    flags: '--admin <spec>',
    env: 'MILTERD_ADMIN',
    path: ['admin'],
    description:
      'HTTP admin endpoint (/healthz, /readyz, /metrics), e.g. inet:9900@127.0.0.1 (inet:PORT alone binds ' +
      'loopback); off disables',
    defaultValue: 'off',
    defaultText: 'off',
    fromText: same(parseAdmin),
    fromFile: parseAdmin,
  },
  adminMaxConnections: {
    flags: '--admin-max-connections <n>',
    env: 'MILTERD_ADMIN_MAX_CONNECTIONS',
    path: ['adminMaxConnections'],
    description: 'admin endpoint connections at once; more are closed at accept',
    defaultValue: DEFAULTS.adminMaxConnections,
    defaultText: String(DEFAULTS.adminMaxConnections),
    fromText: same((v) => parseInteger(v, 1)),
    fromFile: (v) => parseInteger(v, 1),
  },
  policy: {
    flags: '--policy <file>',
    env: 'MILTERD_POLICY',
    path: ['policy'],
    description: 'shutdown-policy file (YAML); config file: a path or an inline policy',
    defaultValue: { kind: 'default' },
    defaultText: 'the embedded default policy',
    fromText: (text) => {
      if (text.trim() === '') throw new Error('expected a file name');
      return text === 'default' ? { kind: 'default' } : { kind: 'file', path: text };
    },
    fromFile: (value, where) => {
      if (value === 'default' || value === null) return { kind: 'default' };
      if (typeof value === 'string' && value !== '') return { kind: 'file', path: value };
      if (typeof value === 'object' && !Array.isArray(value)) {
        // `source` is filled in by the config reader, which has the file text.
        return { kind: 'inline', value, file: where.file, line: where.line, source: '' };
      }
      throw new Error('expected a policy file name or an inline policy mapping');
    },
  },
  store: {
    flags: '--store <url>',
    env: 'MILTERD_STORE',
    path: ['store', 'url'],
    description:
      'where cross-session limits are counted: memory (this process), or redis://[USER:PASS@]HOST:PORT/DB, ' +
      'rediss:// (TLS), redis+unix:///PATH, redis+sentinel://HOST:PORT,…/MASTER, redis+cluster://HOST:PORT,… ' +
      '(config: also store: URL)',
    defaultValue: 'memory',
    defaultText: 'memory',
    fromText: same(parseStoreSetting),
    fromFile: parseStoreSetting,
  },
  storePrefix: {
    flags: '--store-prefix <text>',
    env: 'MILTERD_STORE_PREFIX',
    path: ['store', 'prefix'],
    description: 'prefix of every store key (several fleets can share one Redis)',
    defaultValue: DEFAULTS.storePrefix,
    defaultText: DEFAULTS.storePrefix,
    fromText: same(parseStorePrefix),
    fromFile: parseStorePrefix,
  },
  storeTimeout: {
    flags: '--store-timeout <duration>',
    env: 'MILTERD_STORE_TIMEOUT',
    path: ['store', 'timeout'],
    description: "deadline of one store call; past it the rule's on-store-error applies",
    defaultValue: DEFAULTS.storeTimeoutMs,
    defaultText: `${DEFAULTS.storeTimeoutMs}ms`,
    fromText: same((v) => positive(parseDuration(v))),
    fromFile: (v) => positive(parseDuration(v)),
  },
  storeLeaseTtl: {
    flags: '--store-lease-ttl <duration>',
    env: 'MILTERD_STORE_LEASE_TTL',
    path: ['store', 'leaseTtl'],
    description:
      'a session counts against its client while its lease lives; live sessions renew it every third of ' +
      'this, so the sessions of a crashed milterd stop counting within it',
    defaultValue: DEFAULTS.storeLeaseTtlMs,
    defaultText: `${DEFAULTS.storeLeaseTtlMs / 1000}s`,
    fromText: same((v) => positive(parseDuration(v))),
    fromFile: (v) => positive(parseDuration(v)),
  },
  storeBatchInterval: {
    flags: '--store-batch-interval <duration>',
    env: 'MILTERD_STORE_BATCH_INTERVAL',
    path: ['store', 'batchInterval'],
    description:
      'Redis: the least time between two store calls; the operations of all sessions arriving in ' +
      'between go together in the next call (an idle instance sends at once)',
    defaultValue: DEFAULTS.storeBatchIntervalMs,
    defaultText: `${DEFAULTS.storeBatchIntervalMs}ms`,
    fromText: same((v) => batchInterval(parseDuration(v))),
    fromFile: (v) => batchInterval(parseDuration(v)),
  },
  storeHashAddresses: {
    flags: '--store-hash-addresses [bool]',
    env: 'MILTERD_STORE_HASH_ADDRESSES',
    path: ['store', 'hashAddresses'],
    description: 'keys hold a hash of the client address (or network) instead of the address',
    defaultValue: false,
    defaultText: 'false',
    fromText: same(parseBoolean),
    fromFile: parseBoolean,
  },
  storeInstances: {
    flags: '--store-instances <n>',
    env: 'MILTERD_STORE_INSTANCES',
    path: ['store', 'instances'],
    description: 'milterd instances sharing the store; on-store-error: local divides each limit by it',
    defaultValue: DEFAULTS.storeInstances,
    defaultText: String(DEFAULTS.storeInstances),
    fromText: same((v) => parseInteger(v, 1)),
    fromFile: (v) => parseInteger(v, 1),
  },
  storeReadyz: {
    flags: '--store-readyz [bool]',
    env: 'MILTERD_STORE_READYZ',
    path: ['store', 'readyz'],
    description:
      "/readyz fails while the store's circuit breaker is open (default: the store does not matter)",
    defaultValue: false,
    defaultText: 'false',
    fromText: same(parseBoolean),
    fromFile: parseBoolean,
  },
  storeTlsCa: {
    flags: '--store-tls-ca <file>',
    env: 'MILTERD_STORE_TLS_CA',
    path: ['store', 'tlsCa'],
    description:
      "PEM file of the CAs that sign a rediss:// store's certificate, trusted instead of Node's CAs (the " +
      'bundled list, plus NODE_EXTRA_CA_CERTS); read at start',
    defaultValue: undefined,
    defaultText: "Node's CAs",
    fromText: same(parseFileName),
    fromFile: parseFileName,
  },
  storeTlsCert: {
    flags: '--store-tls-cert <file>',
    env: 'MILTERD_STORE_TLS_CERT',
    path: ['store', 'tlsCert'],
    description:
      'PEM file of the client certificate shown to a rediss:// store (Redis tls-auth-clients), with ' +
      '--store-tls-key; read at start',
    defaultValue: undefined,
    defaultText: 'none',
    fromText: same(parseFileName),
    fromFile: parseFileName,
  },
  storeTlsKey: {
    flags: '--store-tls-key <file>',
    env: 'MILTERD_STORE_TLS_KEY',
    path: ['store', 'tlsKey'],
    description: "PEM file of --store-tls-cert's private key (unencrypted); read at start",
    defaultValue: undefined,
    defaultText: 'none',
    fromText: same(parseFileName),
    fromFile: parseFileName,
  },
  filters: {
    flags: '--filter <module>',
    env: 'MILTERD_FILTER',
    path: ['filters'],
    description:
      'pipeline member: a filter module (ESM or CommonJS; default export a Filter or a factory) or ' +
      "builtin:stamp; repeat for several, in order; replaces the config file's filters (env: comma-separated)",
    defaultValue: defaultMembers(),
    defaultText: 'builtin:stamp',
    fromText: (text, previous) => appendMembers(previous, text, (item) => parseFilterArg(item, '--filter')),
    fromFile: (value, where) => parseFiltersValue(value, where.file, where.positionOf),
    alias: {
      flags: '--upstream <spec>',
      env: 'MILTERD_UPSTREAM',
      description:
        'pipeline member: an existing milter at inet:PORT@HOST or unix:/path, between the --filter ' +
        'members in command-line order; repeat for several (env: comma-separated)',
      fromText: (text, previous) =>
        appendMembers(previous, text, (item) => parseUpstreamArg(item, '--upstream')),
    },
  },
};

function batchInterval(ms: number): number {
  if (!(ms >= 0 && ms <= DEFAULTS.storeBatchIntervalMaxMs)) {
    throw new Error(`must be between 0 and ${DEFAULTS.storeBatchIntervalMaxMs}ms`);
  }
  return ms;
}

function positive(ms: number): number {
  if (!(ms > 0)) throw new Error('must be greater than 0');
  return ms;
}

/** A store URL, checked (the URL is kept as written; policy/store-url.ts parses it again at start). */
function parseStoreSetting(value: unknown): string {
  if (typeof value !== 'string') throw new Error('expected memory or a redis:// URL');
  parseStoreUrl(value);
  return value.trim() === '' ? 'memory' : value.trim();
}

/** A file name (checked for readability when the store opens; relative to the config file there). */
function parseFileName(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') throw new Error('expected a file name');
  return value;
}

/** A key prefix: printable, no `{`/`}` (they would become the Cluster hash tag of every key). */
function parseStorePrefix(value: unknown): string {
  if (typeof value !== 'string' || value.length > 64 || !/^[\x21-\x7e]*$/.test(value) || /[{}]/.test(value)) {
    throw new Error('expected up to 64 printable characters without spaces, { or }');
  }
  return value;
}

/** The settings' keys, in table order. */
export const SETTING_KEYS = Object.keys(SETTINGS) as Array<keyof DaemonSettings>;

/** Every default, as a settings object. */
export function defaultSettings(): DaemonSettings {
  const out: Partial<Record<keyof DaemonSettings, unknown>> = {};
  for (const key of SETTING_KEYS) out[key] = structuredClone(SETTINGS[key].defaultValue);
  return out as DaemonSettings;
}

/** Make relative policy paths from the config file absolute. */
export function anchorPolicyPath(policy: PolicySetting, configFile: string): PolicySetting {
  return policy.kind === 'file'
    ? { kind: 'file', path: path.resolve(path.dirname(configFile), policy.path) }
    : policy;
}

/** The settings that name a file, read relative to the config file when they come from it. */
export const FILE_SETTINGS = ['storeTlsCa', 'storeTlsCert', 'storeTlsKey'] as const;

/** An option that stores its value under another setting's name (commander derives it from the flag). */
class AliasOption extends Option {
  readonly #attribute: string;
  constructor(flags: string, description: string, attribute: string) {
    super(flags, description);
    this.#attribute = attribute;
  }
  override attributeName(): string {
    return this.#attribute;
  }
}

/**
 * Add every setting as a commander option with its environment variable and a help line that states
 * the default and the config-file field. Commander defaults are deliberately not set: a value's source
 * (`cli`/`env`) is what lets the config file sit between the environment and the defaults.
 */
export function addSettingOptions(cmd: Command): Command {
  cmd.addOption(
    new Option('-c, --config <file>', 'YAML configuration file (see check-config)').env('MILTERD_CONFIG'),
  );
  for (const key of SETTING_KEYS) {
    const def = SETTINGS[key];
    // Named by the setting, not the flag: `--filter` fills `filters`.
    const option = new AliasOption(
      def.flags,
      `${def.description} (default: ${def.defaultText}) (config: ${def.path.join('.')})`,
      key,
    ).env(def.env);
    if (def.preset !== undefined) option.preset(def.preset);
    option.argParser((text: string, previous: unknown) => {
      try {
        return (def.fromText as (t: string, p: unknown) => unknown)(text, previous);
      } catch (err) {
        throw new InvalidArgumentError(err instanceof Error ? err.message : String(err));
      }
    });
    cmd.addOption(option);
    const alias = def.alias as SettingDef<unknown>['alias'];
    if (alias !== undefined) {
      const extra = new AliasOption(alias.flags, `${alias.description} (config: ${def.path.join('.')})`, key);
      extra.env(alias.env).argParser((text: string, previous: unknown) => {
        try {
          return alias.fromText(text, previous);
        } catch (err) {
          throw new InvalidArgumentError(err instanceof Error ? err.message : String(err));
        }
      });
      cmd.addOption(extra);
    }
  }
  return cmd;
}
