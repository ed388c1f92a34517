/**
 * The YAML configuration file and the merge of every source into {@link DaemonSettings}.
 *
 * File problems are collected, not thrown one by one, so `milterd check-config` can list them all; each
 * is a MilterConfigError with `file`, `line` and `field`.
 */
import path from 'node:path';
import { isMap, isPair, isScalar, LineCounter, type Document, type Node } from 'yaml';
import { MilterConfigError } from '../errors.js';
import {
  checkYamlSize,
  parseYamlDocument,
  readYamlFile,
  YamlFileTooLargeError,
} from '../policy/yaml-file.js';
import {
  anchorPolicyPath,
  defaultSettings,
  SETTING_KEYS,
  SETTINGS,
  type DaemonSettings,
  type PolicySetting,
  type SettingSource,
} from './options.js';
import { formatDuration, formatSocketMode } from './values.js';

/** What a config file contributed: the fields it set (already parsed) and every problem found. */
export interface ConfigFileResult {
  /** Absolute path of the file. */
  file: string;
  values: Partial<DaemonSettings>;
  problems: MilterConfigError[];
}

/** Fields a config file may contain, as `a.b` paths, for "unknown field" errors. */
const KNOWN_PATHS = new Set(SETTING_KEYS.map((k) => SETTINGS[k].path.join('.')));
const KNOWN_GROUPS = new Set(
  SETTING_KEYS.filter((k) => SETTINGS[k].path.length > 1).map((k) => SETTINGS[k].path[0] as string),
);

/** 1-based line of a node's start, if the document kept positions. */
function lineOf(node: Node | null | undefined, lines: LineCounter): number | undefined {
  const start = node?.range?.[0];
  return start === undefined ? undefined : lines.linePos(start).line;
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
        if (!isMap(pair.value)) {
          out.push(
            new MilterConfigError(`${joined}: expected a mapping`, {
              file,
              line: lineOf(pair.key as Node, lines),
              field: joined,
            }),
          );
        } else walk(pair.value, here);
      } else if (!KNOWN_PATHS.has(joined)) {
        out.push(
          new MilterConfigError(`${joined}: unknown field`, {
            file,
            line: lineOf(pair.key as Node, lines),
            field: joined,
          }),
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
    return { file, values: values as Partial<DaemonSettings>, problems };
  }
  const lines = new LineCounter();
  const doc = parseYamlDocument(text, lines);
  for (const e of doc.errors) {
    problems.push(
      new MilterConfigError(`YAML: ${e.message.split('\n')[0]}`, {
        file,
        line: lines.linePos(e.pos[0]).line,
      }),
    );
  }
  if (problems.length > 0) return { file, values: values as Partial<DaemonSettings>, problems };
  if (doc.contents === null) return { file, values: values as Partial<DaemonSettings>, problems };
  if (!isMap(doc.contents)) {
    problems.push(
      new MilterConfigError('the configuration must be a YAML mapping', {
        file,
        line: lineOf(doc.contents, lines),
      }),
    );
    return { file, values: values as Partial<DaemonSettings>, problems };
  }
  checkUnknownKeys(doc, lines, file, problems);
  for (const key of SETTING_KEYS) {
    const def = SETTINGS[key];
    if (!doc.hasIn(def.path)) continue;
    const node = doc.getIn(def.path, true) as Node | undefined;
    const line = lineOf(node, lines);
    const field = def.path.join('.');
    try {
      const raw: unknown = isScalar(node) ? node.value : (node?.toJSON() as unknown);
      const parse = def.fromFile as (v: unknown, w: { file: string; line: number | undefined }) => unknown;
      values[key] = parse(raw, { file, line });
      const policy = values[key] as PolicySetting;
      if (key === 'policy' && policy.kind === 'inline' && node?.range) {
        values[key] = { ...policy, source: blankOutside(text, node.range[0], node.range[1]) };
      }
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      problems.push(new MilterConfigError(`${field}: ${why}`, { file, line, field }, { cause: err }));
    }
  }
  if (values.policy !== undefined) values.policy = anchorPolicyPath(values.policy as PolicySetting, file);
  return { file, values: values as Partial<DaemonSettings>, problems };
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
      return { file: abs, values: {}, problems: [tooLarge(abs, err)] };
    const why = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
    const problem = new MilterConfigError(
      `cannot read configuration file: ${why}`,
      { file: abs },
      { cause: err },
    );
    return { file: abs, values: {}, problems: [problem] };
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
  const first = file?.problems[0];
  if (file !== undefined && first !== undefined) {
    throw new MilterConfigError(file.problems.map(formatConfigProblem).join('\n'), {
      file: first.file,
      ...(first.line === undefined ? {} : { line: first.line }),
      ...(first.field === undefined ? {} : { field: first.field }),
    });
  }
  return mergeSettings(overrides, file);
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
  };
}

/** `FILE:LINE: message` (or fewer parts when unknown), the one-line form used on stderr. */
export function formatConfigProblem(err: MilterConfigError): string {
  // The policy loader already puts `FILE:LINE:` in front of its messages.
  if (err.file !== undefined && err.message.startsWith(err.file)) return err.message;
  const where = [err.file, err.line].filter((p) => p !== undefined).join(':');
  const field = err.field !== undefined && !err.message.includes(err.field) ? ` (field ${err.field})` : '';
  return `${where === '' ? '' : where + ': '}${err.message}${field}`;
}
