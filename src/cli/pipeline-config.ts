/**
 * The daemon's pipeline as settings: which members `milterd serve` runs, in order, as plain data (it
 * crosses the reload worker's thread boundary). Members come from `--filter` / `--upstream` (repeatable,
 * in command-line order), MILTERD_FILTER / MILTERD_UPSTREAM, or the config file's `filters:` list; like
 * every setting, the first of those sources that names any member replaces the later ones (command line >
 * environment > file). Without any: the built-in `X-Milterd` stamp alone, today's default behaviour.
 *
 * Modules are only named here; loading them (and the checks of their shape) is filter-loader.ts.
 */
import path from 'node:path';
import { MilterConfigError } from '../errors.js';
import type { UpstreamFailureAction } from '../pipeline/upstream.js';
import { parseDuration } from '../values.js';
import { formatDuration, parseInteger, parseListenSpec } from './values.js';

/** What a member does when its upstream fails (upstream.ts `onFailure`). */
export const ON_FAILURE_ACTIONS: readonly UpstreamFailureAction[] = ['tempfail', 'accept', 'reject', 'skip'];
export type OnFailureAction = UpstreamFailureAction;

/** Built-in members by name (`builtin: stamp` in the file, `--filter builtin:stamp` on the command line). */
export const BUILTIN_MEMBERS = ['stamp'] as const;
export type BuiltinMember = (typeof BUILTIN_MEMBERS)[number];

/** Prefix of a built-in member on the command line (a module path never has it). */
export const BUILTIN_PREFIX = 'builtin:';

/** Where a member was named, for located errors (`FILE:LINE:COL: filters[1].module: ...` or `--filter`). */
export interface MemberWhere {
  file?: string;
  line?: number;
  column?: number;
  /** `filters[1]`, `--filter`, `MILTERD_UPSTREAM`. */
  field: string;
}

/** Per-upstream time budgets in ms (unset: the upstream member's defaults). */
export interface UpstreamTimeouts {
  connectMs?: number;
  commandMs?: number;
  eomMs?: number;
}

interface MemberCommon {
  /** Unique in the pipeline: the `member` label of the metrics and the log lines. */
  name: string;
  /** The `when:` condition as written (parsed by the pipeline's parseMemberCondition). */
  when?: unknown;
  /** Decisions and changes are logged and counted, not applied. */
  dryRun: boolean;
  where: MemberWhere;
}

/** One pipeline member as configured. */
export type MemberSpec =
  | (MemberCommon & { kind: 'builtin'; builtin: BuiltinMember })
  | (MemberCommon & {
      kind: 'module';
      /** Absolute path of the module file. */
      module: string;
      /** Given to the module's factory (`options:` in the file; undefined on the command line). */
      options?: unknown;
    })
  | (MemberCommon & {
      kind: 'upstream';
      /** Canonical socket spec of the upstream milter. */
      address: string;
      timeouts: UpstreamTimeouts;
      onFailure?: OnFailureAction;
      breaker?: { failures?: number; openMs?: number };
    });

/** Keys of one `filters:` entry. */
export const MEMBER_KEYS = [
  'name',
  'builtin',
  'module',
  'upstream',
  'options',
  'when',
  'dry-run',
  'timeouts',
  'on-failure',
  'breaker',
] as const;
export const MEMBER_TIMEOUT_KEYS = ['connect', 'command', 'eom'] as const;
export const MEMBER_BREAKER_KEYS = ['failures', 'open'] as const;
/** Keys only an upstream member takes. */
const UPSTREAM_ONLY = ['timeouts', 'on-failure', 'breaker'] as const;

/** The default pipeline: the built-in stamp alone. */
export function defaultMembers(): MemberSpec[] {
  return [{ kind: 'builtin', builtin: 'stamp', name: 'stamp', dryRun: false, where: { field: 'default' } }];
}

/** Name a member gets without `name:`: the builtin's name, the module's file name, the upstream's address. */
function autoName(spec: {
  kind: MemberSpec['kind'];
  builtin?: string;
  module?: string;
  address?: string;
}): string {
  if (spec.kind === 'builtin') return spec.builtin as string;
  if (spec.kind === 'module') return path.basename(spec.module as string).replace(/\.(c|m)?js$/, '');
  return spec.address as string;
}

/**
 * One `--filter` value: a module path (relative to the working directory) or `builtin:NAME`. `where` is
 * the flag or the environment variable it came from.
 */
export function parseFilterArg(text: string, where: string): MemberSpec {
  const value = text.trim();
  if (value === '') throw new Error('expected a module path or builtin:stamp');
  if (value.startsWith(BUILTIN_PREFIX)) {
    const name = value.slice(BUILTIN_PREFIX.length);
    if (!(BUILTIN_MEMBERS as readonly string[]).includes(name)) {
      throw new Error(`unknown built-in filter "${name}" (built-in: ${BUILTIN_MEMBERS.join(', ')})`);
    }
    return { kind: 'builtin', builtin: name as BuiltinMember, name, dryRun: false, where: { field: where } };
  }
  const module = path.resolve(value);
  return {
    kind: 'module',
    module,
    name: autoName({ kind: 'module', module }),
    dryRun: false,
    where: { field: where },
  };
}

/** One `--upstream` value: the socket spec of a milter (inet:PORT@HOST, inet6:PORT@HOST, unix:/path). */
export function parseUpstreamArg(text: string, where: string): MemberSpec {
  const address = parseListenSpec(text.trim());
  return { kind: 'upstream', address, name: address, timeouts: {}, dryRun: false, where: { field: where } };
}

/** `previous` plus the members of one command-line value (the environment's is comma-separated). */
export function appendMembers(
  previous: MemberSpec[] | undefined,
  text: string,
  parse: (item: string) => MemberSpec,
): MemberSpec[] {
  const items = text.split(',').filter((s) => s.trim() !== '');
  if (items.length === 0) throw new Error('expected at least one member');
  return uniqueNames([...(previous ?? []), ...items.map(parse)]);
}

/** Give automatically named members that clash a `-2`, `-3` suffix (explicit clashes are refused earlier). */
function uniqueNames(members: MemberSpec[]): MemberSpec[] {
  const seen = new Set<string>();
  return members.map((m) => {
    let name = m.name;
    for (let i = 2; seen.has(name); i++) name = `${m.name}-${i}`;
    seen.add(name);
    return name === m.name ? m : { ...m, name };
  });
}

/** Locate positions inside the `filters:` node (by path below it), for errors and entries. */
export type PositionOf = (at: ReadonlyArray<string | number>) => { line?: number; column?: number };

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The config file's `filters:` list. Each entry names exactly one of `builtin`, `module` (a path relative
 * to the config file) or `upstream` (a socket spec). Throws MilterConfigError located at the offending
 * key (file, line, column, field `filters[i].key`).
 */
export function parseFiltersValue(value: unknown, file: string, positionOf: PositionOf): MemberSpec[] {
  const fail = (at: ReadonlyArray<string | number>, why: string): never => {
    const field = at.reduce<string>(
      (acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : `${acc}.${p}`),
      'filters',
    );
    throw new MilterConfigError(`${field}: ${why}`, { file, ...positionOf(at), field });
  };
  if (!Array.isArray(value)) return fail([], 'expected a list of members');
  const members: MemberSpec[] = [];
  const explicit = new Map<string, number>();
  (value as unknown[]).forEach((entry, i) => {
    if (!isRecord(entry)) fail([i], 'expected a mapping with builtin:, module: or upstream:');
    const e = entry as Record<string, unknown>;
    for (const key of Object.keys(e)) {
      if (!(MEMBER_KEYS as readonly string[]).includes(key)) {
        fail([i, key], `unknown field (fields: ${MEMBER_KEYS.join(', ')})`);
      }
    }
    const kinds = (['builtin', 'module', 'upstream'] as const).filter((k) => e[k] !== undefined);
    if (kinds.length !== 1) fail([i], 'needs exactly one of builtin:, module: or upstream:');
    const kind = kinds[0] as 'builtin' | 'module' | 'upstream';
    if (kind !== 'upstream') {
      for (const key of UPSTREAM_ONLY)
        if (e[key] !== undefined) fail([i, key], 'only for an upstream: member');
    }
    if (kind !== 'module' && e.options !== undefined) fail([i, 'options'], 'only for a module: member');
    const where: MemberWhere = { file, ...positionOf([i]), field: `filters[${i}]` };
    const text = (key: string): string => {
      const v = e[key];
      if (typeof v !== 'string' || v.trim() === '') fail([i, key], 'expected a non-empty string');
      return (v as string).trim();
    };
    let dryRun = false;
    const dry = e['dry-run'];
    if (dry !== undefined) {
      if (typeof dry !== 'boolean') fail([i, 'dry-run'], 'expected true or false');
      dryRun = dry as boolean;
    }
    const common = { dryRun, where, ...(e.when === undefined ? {} : { when: e.when }) };
    let spec: MemberSpec;
    if (kind === 'builtin') {
      const b = text('builtin');
      if (!(BUILTIN_MEMBERS as readonly string[]).includes(b)) {
        fail([i, 'builtin'], `unknown built-in filter "${b}" (built-in: ${BUILTIN_MEMBERS.join(', ')})`);
      }
      spec = { kind, builtin: b as BuiltinMember, name: b, ...common };
    } else if (kind === 'module') {
      const module = path.resolve(path.dirname(file), text('module'));
      spec = {
        kind,
        module,
        name: autoName({ kind, module }),
        ...common,
        ...(e.options === undefined ? {} : { options: e.options }),
      };
    } else {
      let address = '';
      try {
        address = parseListenSpec(text('upstream'));
      } catch (err) {
        if (err instanceof MilterConfigError && err.field?.startsWith('filters')) throw err;
        fail([i, 'upstream'], err instanceof Error ? err.message : String(err));
      }
      spec = {
        kind,
        address,
        name: address,
        timeouts: parseTimeouts(e.timeouts, [i, 'timeouts'], fail),
        ...common,
      };
      const onFailure = e['on-failure'];
      if (onFailure !== undefined) {
        if (!(ON_FAILURE_ACTIONS as readonly unknown[]).includes(onFailure)) {
          fail([i, 'on-failure'], `expected one of ${ON_FAILURE_ACTIONS.join(', ')}`);
        }
        spec.onFailure = onFailure as OnFailureAction;
      }
      if (e.breaker !== undefined) spec.breaker = parseBreaker(e.breaker, [i, 'breaker'], fail);
    }
    if (e.name !== undefined) {
      const name = text('name');
      const before = explicit.get(name);
      if (before !== undefined) fail([i, 'name'], `name "${name}" is already used by filters[${before}]`);
      explicit.set(name, i);
      spec.name = name;
    }
    members.push(spec);
  });
  // Automatic names yield to explicit ones: an explicit "dkim" keeps its name, a clashing automatic one moves.
  const taken = new Set(explicit.keys());
  return members.map((m, i) => {
    if (explicit.get(m.name) === i) return m;
    let name = m.name;
    for (let n = 2; taken.has(name); n++) name = `${m.name}-${n}`;
    taken.add(name);
    return name === m.name ? m : { ...m, name };
  });
}

type Fail = (at: ReadonlyArray<string | number>, why: string) => never;

function parseTimeouts(value: unknown, at: Array<string | number>, fail: Fail): UpstreamTimeouts {
  const out: UpstreamTimeouts = {};
  if (value === undefined) return out;
  if (!isRecord(value)) return fail(at, `expected a mapping of ${MEMBER_TIMEOUT_KEYS.join(', ')}`);
  for (const [key, raw] of Object.entries(value)) {
    if (!(MEMBER_TIMEOUT_KEYS as readonly string[]).includes(key)) {
      fail([...at, key], `unknown field (fields: ${MEMBER_TIMEOUT_KEYS.join(', ')})`);
    }
    try {
      out[`${key}Ms` as 'connectMs'] = parseDuration(raw);
    } catch (err) {
      fail([...at, key], (err as Error).message);
    }
  }
  return out;
}

function parseBreaker(
  value: unknown,
  at: Array<string | number>,
  fail: Fail,
): { failures?: number; openMs?: number } {
  if (!isRecord(value)) return fail(at, `expected a mapping of ${MEMBER_BREAKER_KEYS.join(', ')}`);
  const out: { failures?: number; openMs?: number } = {};
  for (const [key, raw] of Object.entries(value)) {
    try {
      if (key === 'failures') out.failures = parseInteger(raw, 1);
      else if (key === 'open') out.openMs = parseDuration(raw);
      else fail([...at, key], `unknown field (fields: ${MEMBER_BREAKER_KEYS.join(', ')})`);
    } catch (err) {
      if (err instanceof MilterConfigError) throw err;
      fail([...at, key], (err as Error).message);
    }
  }
  return out;
}

/** A member as the config file writes it (what check-config prints; feeding it back gives the same member). */
export function memberToConfigObject(m: MemberSpec): Record<string, unknown> {
  const out: Record<string, unknown> = { name: m.name };
  if (m.kind === 'builtin') out.builtin = m.builtin;
  else if (m.kind === 'module') {
    out.module = m.module;
    if (m.options !== undefined) out.options = m.options;
  } else out.upstream = m.address;
  if (m.when !== undefined) out.when = m.when;
  out['dry-run'] = m.dryRun;
  if (m.kind === 'upstream') {
    const t = m.timeouts;
    const timeouts: Record<string, string> = {};
    if (t.connectMs !== undefined) timeouts.connect = formatDuration(t.connectMs);
    if (t.commandMs !== undefined) timeouts.command = formatDuration(t.commandMs);
    if (t.eomMs !== undefined) timeouts.eom = formatDuration(t.eomMs);
    if (Object.keys(timeouts).length > 0) out.timeouts = timeouts;
    if (m.onFailure !== undefined) out['on-failure'] = m.onFailure;
    if (m.breaker !== undefined) {
      out.breaker = {
        ...(m.breaker.failures === undefined ? {} : { failures: m.breaker.failures }),
        ...(m.breaker.openMs === undefined ? {} : { open: formatDuration(m.breaker.openMs) }),
      };
    }
  }
  return out;
}
