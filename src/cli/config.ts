/**
 * The YAML configuration file and the merge of every source into {@link DaemonSettings}.
 *
 * File problems are collected, not thrown one by one, so `milterd check-config` (and `serve`) can list
 * them all, with the policy's (`loadConfiguration`); each is a MilterConfigError with `file`, `line`,
 * `column` and `field`.
 */
import path from 'node:path';
import { isCollection, isMap, isPair, isScalar, LineCounter, type Document, type Node } from 'yaml';
import { MilterConfigError } from '../errors.js';
import { checkPolicy } from '../policy/load.js';
import type { PolicyConfig } from '../policy/rules.js';
import {
  checkYamlSize,
  didYouMean,
  parseYamlDocument,
  positionAt,
  readYamlFile,
  YamlFileTooLargeError,
} from '../policy/yaml-file.js';
import {
  anchorPolicyPath,
  defaultSettings,
  FILE_SETTINGS,
  SETTING_KEYS,
  SETTINGS,
  type DaemonSettings,
  type PolicySetting,
  type SettingSource,
} from './options.js';
import { redactStoreUrl } from '../policy/store-url.js';
import { memberToConfigObject, type PositionOf } from './pipeline-config.js';
import { loadPolicySetting } from './policy-source.js';
import { readStoreTls } from './store-tls.js';
import type { RedisStoreTls } from '../policy/redis-store.js';
import { formatDuration, formatSocketMode } from './values.js';

/** What a config file contributed: the fields it set (already parsed) and every problem found. */
export interface ConfigFileResult {
  /** Absolute path of the file. */
  file: string;
  values: Partial<DaemonSettings>;
  problems: MilterConfigError[];
  /** False when the file could not be read or is not a YAML mapping: its values are unknown. */
  parsed: boolean;
}

/** Fields a config file may contain, as `a.b` paths, for "unknown field" errors. */
const KNOWN_PATHS = new Set(SETTING_KEYS.map((k) => SETTINGS[k].path.join('.')));
const KNOWN_GROUPS = new Set(
  SETTING_KEYS.filter((k) => SETTINGS[k].path.length > 1).map((k) => SETTINGS[k].path[0] as string),
);

/**
 * Groups that may also be written as one scalar, meaning their `url` field (`store: redis://…` is
 * `store: { url: redis://… }`).
 */
const SCALAR_GROUPS: ReadonlyMap<string, string> = new Map([['store', 'url']]);

/** Keys allowed at the top level and in each group, for "did you mean" hints. */
const KEYS_IN: ReadonlyMap<string, readonly string[]> = (() => {
  const out = new Map<string, string[]>();
  for (const key of SETTING_KEYS) {
    const p = SETTINGS[key].path;
    const group = p.length > 1 ? p.slice(0, -1).join('.') : '';
    const top = out.get('') ?? [];
    if (!top.includes(p[0] as string)) top.push(p[0] as string);
    out.set('', top);
    if (group !== '') out.set(group, [...(out.get(group) ?? []), p[p.length - 1] as string]);
  }
  return out;
})();

/** 1-based line and column of a node's start, if the document kept positions. */
function posOf(
  node: Node | null | undefined,
  lines: LineCounter,
): { line: number; column: number } | Record<string, never> {
  const start = node?.range?.[0];
  return start === undefined ? {} : positionAt(lines, start);
}

/** `text` with every character outside [start, end) but line feeds replaced by spaces. */
function blankOutside(text: string, start: number, end: number): string {
  const blank = (s: string): string => s.replace(/[^\n]/g, ' ');
  return blank(text.slice(0, start)) + text.slice(start, end) + blank(text.slice(end));
}

/** Report keys the daemon does not know (typos must not pass silently). */
function checkUnknownKeys(doc: Document, lines: LineCounter, file: string, out: MilterConfigError[]): void {
  const walk = (node: unknown, prefix: string[]): void => {
    if (!isMap(node)) return;
    for (const pair of node.items) {
      if (!isPair(pair)) continue;
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      const here = [...prefix, key];
      const joined = here.join('.');
      if (prefix.length === 0 && KNOWN_GROUPS.has(key)) {
        if (SCALAR_GROUPS.has(key) && isScalar(pair.value)) continue;
        if (!isMap(pair.value)) {
          out.push(
            new MilterConfigError(`${joined}: expected a mapping`, {
              file,
              ...posOf(pair.key as Node, lines),
              field: joined,
            }),
          );
        } else walk(pair.value, here);
      } else if (!KNOWN_PATHS.has(joined)) {
        const guess = didYouMean(key, KEYS_IN.get(prefix.join('.')) ?? []);
        out.push(
          new MilterConfigError(
            `${joined}: unknown field${guess === undefined ? '' : ` (did you mean "${guess}"?)`}`,
            { file, ...posOf(pair.key as Node, lines), field: joined },
          ),
        );
      }
    }
  };
  walk(doc.contents, []);
}

/**
 * Parse config file text. Never throws: YAML syntax errors, unknown fields and invalid values all end
 * up in `problems`.
 */
export function parseConfigText(text: string, file: string): ConfigFileResult {
  const problems: MilterConfigError[] = [];
  const values: Partial<Record<keyof DaemonSettings, unknown>> = {};
  try {
    checkYamlSize(text);
  } catch (err) {
    problems.push(tooLarge(file, err as YamlFileTooLargeError));
    return { file, values: values as Partial<DaemonSettings>, problems, parsed: false };
  }
  const lines = new LineCounter();
  const doc = parseYamlDocument(text, lines);
  for (const e of doc.errors) {
    problems.push(
      new MilterConfigError(`YAML syntax error: ${e.message.split('\n')[0]}`, {
        file,
        ...positionAt(lines, e.pos[0]),
      }),
    );
  }
  if (problems.length > 0)
    return { file, values: values as Partial<DaemonSettings>, problems, parsed: false };
  if (doc.contents === null)
    return { file, values: values as Partial<DaemonSettings>, problems, parsed: true };
  if (!isMap(doc.contents)) {
    problems.push(
      new MilterConfigError('the configuration must be a YAML mapping', {
        file,
        ...posOf(doc.contents, lines),
      }),
    );
    return { file, values: values as Partial<DaemonSettings>, problems, parsed: false };
  }
  checkUnknownKeys(doc, lines, file, problems);
  for (const key of SETTING_KEYS) {
    const def = SETTINGS[key];
    const group = def.path.length === 2 ? (def.path[0] as string) : undefined;
    const shorthand =
      group !== undefined && SCALAR_GROUPS.get(group) === def.path[1] && isScalar(doc.get(group, true));
    if (!shorthand && !doc.hasIn(def.path)) continue;
    const node = (shorthand ? doc.get(group, true) : doc.getIn(def.path, true)) as Node | undefined;
    const pos = posOf(node, lines);
    const line = pos.line;
    const field = def.path.join('.');
    try {
      const raw: unknown = isScalar(node) ? node.value : (node?.toJSON() as unknown);
      const parse = def.fromFile as (
        v: unknown,
        w: { file: string; line: number | undefined; positionOf: PositionOf },
      ) => unknown;
      const positionOf: PositionOf = (at) => {
        // The value at that path, else the whole setting.
        const inner = isCollection(node) ? (node.getIn(at, true) as Node | undefined) : undefined;
        return posOf(inner ?? node, lines);
      };
      values[key] = parse(raw, { file, line, positionOf });
      const policy = values[key] as PolicySetting;
      if (key === 'policy' && policy.kind === 'inline' && node?.range) {
        values[key] = { ...policy, source: blankOutside(text, node.range[0], node.range[1]) };
      }
    } catch (err) {
      // Already located below the setting (a `filters:` entry).
      if (err instanceof MilterConfigError && err.field?.startsWith(field)) {
        problems.push(err);
        continue;
      }
      const why = err instanceof Error ? err.message : String(err);
      problems.push(new MilterConfigError(`${field}: ${why}`, { file, ...pos, field }, { cause: err }));
    }
  }
  if (values.policy !== undefined) values.policy = anchorPolicyPath(values.policy as PolicySetting, file);
  for (const key of FILE_SETTINGS) {
    const name = values[key];
    if (typeof name === 'string') values[key] = path.resolve(path.dirname(file), name);
  }
  problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  return { file, values: values as Partial<DaemonSettings>, problems, parsed: true };
}

function tooLarge(file: string, err: YamlFileTooLargeError): MilterConfigError {
  return new MilterConfigError(`configuration file too large: ${err.message}`, { file }, { cause: err });
}

/**
 * Read and parse a config file; an unreadable file, or one over MAX_YAML_FILE_BYTES (1 MiB, refused
 * before parsing), is one problem (line undefined).
 */
export async function readConfigFile(file: string): Promise<ConfigFileResult> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = await readYamlFile(abs);
  } catch (err) {
    if (err instanceof YamlFileTooLargeError)
      return { file: abs, values: {}, problems: [tooLarge(abs, err)], parsed: false };
    const why = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
    const problem = new MilterConfigError(
      `cannot read configuration file: ${why}`,
      { file: abs },
      { cause: err },
    );
    return { file: abs, values: {}, problems: [problem], parsed: false };
  }
  return parseConfigText(text, abs);
}

/** Settings and where each one came from. */
export interface ResolvedSettings {
  settings: DaemonSettings;
  sources: Record<keyof DaemonSettings, SettingSource>;
  /** The config file used, if any. */
  configFile: string | undefined;
}

/** Values that came from the command line or the environment, with their source. */
export type SettingOverrides = Partial<
  Record<keyof DaemonSettings, { value: unknown; source: 'cli' | 'env' }>
>;

/**
 * Merge the sources: `overrides` holds the values that came from the command line or the environment
 * (with their source), `file` the config file's values. Precedence: cli > env > file > default.
 */
export function mergeSettings(
  overrides: SettingOverrides,
  file: ConfigFileResult | undefined,
): ResolvedSettings {
  const settings = defaultSettings() as unknown as Record<keyof DaemonSettings, unknown>;
  const sources = {} as Record<keyof DaemonSettings, SettingSource>;
  for (const key of SETTING_KEYS) {
    const override = overrides[key];
    if (override !== undefined) {
      settings[key] = override.value;
      sources[key] = override.source;
    } else if (file !== undefined && file.values[key] !== undefined) {
      settings[key] = file.values[key];
      sources[key] = 'file';
    } else {
      sources[key] = 'default';
    }
  }
  const resolved = settings as unknown as DaemonSettings;
  // A --policy given on the command line or in the environment is relative to the working directory.
  if (resolved.policy.kind === 'file' && sources.policy !== 'file') {
    resolved.policy = { kind: 'file', path: path.resolve(resolved.policy.path) };
  }
  for (const key of FILE_SETTINGS) {
    const name = resolved[key];
    if (name !== undefined && sources[key] !== 'file') resolved[key] = path.resolve(name);
  }
  return { settings: resolved, sources, configFile: file?.file };
}

/**
 * Read the config file (if any) and merge it with `overrides`: what `serve` does at start and at SIGHUP.
 * Rejects with one MilterConfigError listing every problem of the file (located by its first one).
 */
export async function resolveSettings(
  overrides: SettingOverrides,
  configFile: string | undefined,
): Promise<ResolvedSettings> {
  const file = configFile === undefined ? undefined : await readConfigFile(configFile);
  if (file !== undefined && file.problems.length > 0) {
    throw MilterConfigError.of(file.problems, formatConfigProblem);
  }
  return mergeSettings(overrides, file);
}

/** Everything `serve` starts from, or every problem found on the way (see {@link loadConfiguration}). */
export interface LoadedConfiguration {
  resolved: ResolvedSettings;
  /** The validated policy; undefined when it has problems or could not be located. */
  policy: PolicyConfig | undefined;
  /** Problems of the config file, then of a separate policy file, each in file order. */
  problems: MilterConfigError[];
  /** The store's TLS files, read (store-tls.ts); undefined when none is set or any has a problem. */
  storeTls: RedisStoreTls | undefined;
}

/** Read a policy setting like loadPolicySetting, but collect every problem instead of throwing. */
async function checkPolicySetting(
  setting: PolicySetting,
): Promise<{ config: PolicyConfig | undefined; problems: MilterConfigError[] }> {
  if (setting.kind === 'inline') return checkPolicy(setting.source, setting.file);
  try {
    return { config: await loadPolicySetting(setting), problems: [] };
  } catch (err) {
    if (!(err instanceof MilterConfigError)) throw err;
    return { config: undefined, problems: [...err.problems] };
  }
}

/**
 * Read the config file, the policy it names and the store's TLS files, and report every problem of them
 * in one go (what `check-config` prints and `serve` refuses to start with). The policy is still checked
 * when the config file has problems, unless its own setting is among them (or the file could not be
 * parsed at all). An inline policy's problems are merged into the config file's by position.
 */
export async function loadConfiguration(
  overrides: SettingOverrides,
  configFile: string | undefined,
): Promise<LoadedConfiguration> {
  const file = configFile === undefined ? undefined : await readConfigFile(configFile);
  const resolved = mergeSettings(overrides, file);
  const problems = [...(file?.problems ?? [])];
  const policyKnown =
    resolved.sources.policy !== 'file' && resolved.sources.policy !== 'default'
      ? true
      : file === undefined || (file.parsed && !problems.some((p) => p.field === 'policy'));
  let policy: PolicyConfig | undefined;
  if (policyKnown) {
    const checked = await checkPolicySetting(resolved.settings.policy);
    policy = checked.config;
    problems.push(...checked.problems);
  }
  let storeTls: RedisStoreTls | undefined;
  // Unknown when the file could not be parsed: its TLS settings (or the URL they go with) may be missing.
  if (file === undefined || file.parsed) {
    const read = await readStoreTls(resolved.settings, resolved.sources, {
      configFile: file?.file,
      checkUrl: !problems.some((p) => p.field === 'store.url'),
    });
    storeTls = read.tls;
    problems.push(...read.problems);
  }
  // Stable: the config file's problems first, a policy file's after them, each by line and column.
  const order = new Map<string | undefined, number>([[file?.file, 0]]);
  for (const p of problems) if (!order.has(p.file)) order.set(p.file, order.size);
  problems.sort(
    (a, b) =>
      (order.get(a.file) ?? 0) - (order.get(b.file) ?? 0) ||
      (a.line ?? 0) - (b.line ?? 0) ||
      (a.column ?? 0) - (b.column ?? 0),
  );
  return { resolved, policy: problems.length === 0 ? policy : undefined, problems, storeTls };
}

/**
 * The effective configuration as a config-file-shaped object (what `check-config` prints): feeding it back
 * as a config file gives the same settings.
 */
export function settingsToConfigObject(s: DaemonSettings): Record<string, unknown> {
  return {
    listen: [...s.listen],
    ...(s.socketMode === undefined ? {} : { socketMode: formatSocketMode(s.socketMode) }),
    ...(s.socketGroup === undefined ? {} : { socketGroup: s.socketGroup }),
    logLevel: s.logLevel,
    logPretty: s.logPretty,
    logBuffer: s.logBuffer,
    logSyslog: s.logSyslog,
    logSyslogFacility: s.logSyslogFacility,
    logSyslogFormat: s.logSyslogFormat,
    maxConnections: s.maxConnections,
    maxConnectionsPerPeer: s.maxConnectionsPerPeer,
    backlog: s.backlog,
    sharedReadBuffer: s.sharedReadBuffer,
    timeouts: {
      negotiate: formatDuration(s.timeoutNegotiate),
      frame: formatDuration(s.timeoutFrame),
      idle: formatDuration(s.timeoutIdle),
      callback: formatDuration(s.timeoutCallback),
    },
    failureDecision: s.failureDecision,
    drainTimeout: formatDuration(s.drainTimeout),
    admin: s.admin,
    adminMaxConnections: s.adminMaxConnections,
    policy:
      s.policy.kind === 'default' ? 'default' : s.policy.kind === 'file' ? s.policy.path : s.policy.value,
    store: {
      url: redactStoreUrl(s.store),
      prefix: s.storePrefix,
      timeout: formatDuration(s.storeTimeout),
      leaseTtl: formatDuration(s.storeLeaseTtl),
      batchInterval: formatDuration(s.storeBatchInterval),
      hashAddresses: s.storeHashAddresses,
      instances: s.storeInstances,
      readyz: s.storeReadyz,
      ...(s.storeTlsCa === undefined ? {} : { tlsCa: s.storeTlsCa }),
      ...(s.storeTlsCert === undefined ? {} : { tlsCert: s.storeTlsCert }),
      ...(s.storeTlsKey === undefined ? {} : { tlsKey: s.storeTlsKey }),
    },
    filters: s.filters.map(memberToConfigObject),
  };
}

/** `FILE:LINE:COLUMN: message` (or fewer parts when unknown), the one-line form used on stderr. */
export function formatConfigProblem(err: MilterConfigError): string {
  // The policy loader already puts `FILE:LINE:COLUMN:` in front of its messages.
  if (err.file !== undefined && err.message.startsWith(err.file)) return err.message;
  const where = [err.file, err.line, err.line === undefined ? undefined : err.column]
    .filter((p) => p !== undefined)
    .join(':');
  const field = err.field !== undefined && !err.message.includes(err.field) ? ` (field ${err.field})` : '';
  return `${where === '' ? '' : where + ': '}${err.message}${field}`;
}
