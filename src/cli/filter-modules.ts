/**
 * From {@link MemberSpec}s to the daemon's filter: load filter modules (ESM or CommonJS), build the
 * built-in stamp and the upstream milters, run them as one pipeline, and put the shutdown policy around
 * the whole of it. Every problem is a located, one-line MilterConfigError: `serve` exits 3 with it at
 * start, a SIGHUP reload is refused with it (the running pipeline stays).
 *
 * Reload: a module file is imported under a URL that carries a hash of its content, so a changed file is
 * evaluated afresh (new connections get it; open connections keep the filter they started with, see
 * reloadable-filter.ts) and an unchanged one is the same module instance. Only the named file is
 * re-evaluated, not the files it imports; every changed version stays in Node's module cache until exit.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import type { Logger } from 'pino';
import type { DaemonMetrics } from '../admin/observer.js';
import { ModuleRegistry } from '../admin/metrics.js';
import { MilterConfigError } from '../errors.js';
import { FILTER_CALLBACKS, type Filter } from '../filter.js';
import { createDefaultFilter } from '../filters/default.js';
import { withShutdownPolicy, type ShutdownPolicy } from '../policy/index.js';
import type { FailureDecision } from '../session/types.js';
import { parseMemberCondition, pipeline, type MemberEvent, type PipelineMember } from '../pipeline/index.js';
import { upstreamFilter } from '../pipeline/upstream.js';
import type { MemberSpec } from './pipeline-config.js';

/** What a filter module's factory receives besides its options. */
export interface FilterModuleContext {
  /** The daemon's logger with `{ member: NAME }` bound. */
  logger: Logger;
  /**
   * The daemon's Prometheus registry (served on /metrics). Registering a name again returns the metric
   * registered first when type and labels match, so a module reloaded on SIGHUP keeps counting.
   */
  metrics: ModuleRegistry;
}

/** A filter module's default export, when it is not a Filter itself. */
export type FilterFactory = (options: unknown, context: FilterModuleContext) => Filter | Promise<Filter>;

/** What building the daemon's filter needs. */
export interface BuildPipelineContext {
  logger: Logger;
  metrics: DaemonMetrics;
  /** The value of the built-in stamp's `X-Milterd` header. */
  stampHeader: string;
  failureDecision: FailureDecision;
}

/** The daemon's filter and the members it runs. */
export interface BuiltPipeline {
  filter: Filter;
  members: readonly PipelineMember[];
}

const requireHere = createRequire(import.meta.url);

/** `FILE:LINE:COL: filters[1]: ...` or `--filter: ...`: the problem, located where the member was named. */
function memberError(spec: MemberSpec, what: string, why: unknown): MilterConfigError {
  const text = (why instanceof Error ? why.message : String(why)).split('\n')[0]?.trim() ?? '';
  const { file, line, column, field } = spec.where;
  return new MilterConfigError(
    `${field}: ${what}: ${text}`,
    {
      ...(file === undefined ? {} : { file }),
      ...(line === undefined ? {} : { line }),
      ...(column === undefined ? {} : { column }),
      field,
    },
    { cause: why },
  );
}

const describe = (value: unknown): string =>
  value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;

/** Why `value` is not a Filter, or undefined when it is one. */
export function filterShapeProblem(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return `expected a Filter object or a factory function, got ${describe(value)}`;
  }
  const record = value as Record<string, unknown>;
  let callbacks = 0;
  for (const name of FILTER_CALLBACKS) {
    const cb = record[name];
    if (cb === undefined) continue;
    if (typeof cb !== 'function') return `"${name}" is ${describe(cb)}, expected a function`;
    callbacks++;
  }
  if (callbacks === 0) return `no filter callback (${FILTER_CALLBACKS.join(', ')})`;
  if (record.actions !== undefined && !Array.isArray(record.actions)) return '"actions" is not a list';
  if (record.macros !== undefined && (typeof record.macros !== 'object' || record.macros === null)) {
    return '"macros" is not a mapping';
  }
  return undefined;
}

/** Import a module file; a changed file (by content) is evaluated afresh. */
async function importFresh(file: string): Promise<Record<string, unknown>> {
  const bytes = await readFile(file);
  const version = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
  // The CommonJS loader keeps its own cache by file name, whatever the URL's query says.
  const cached = requireHere.cache[file];
  if (cached !== undefined && (cached as { milterdVersion?: string }).milterdVersion !== version) {
    delete requireHere.cache[file];
  }
  const ns = (await import(`${pathToFileURL(file).href}?v=${version}`)) as Record<string, unknown>;
  const loaded = requireHere.cache[file];
  if (loaded !== undefined) (loaded as { milterdVersion?: string }).milterdVersion = version;
  return ns;
}

/** The module's default export, unwrapped from a CommonJS `exports.default` (TypeScript's output). */
function defaultExport(ns: Record<string, unknown>): unknown {
  let value = ns.default;
  if (
    typeof value === 'object' &&
    value !== null &&
    (value as { __esModule?: unknown }).__esModule === true
  ) {
    value = (value as { default?: unknown }).default;
  }
  return value;
}

/** Load one module member: import it, call its factory, check the shape. */
async function loadModule(
  spec: MemberSpec & { kind: 'module' },
  context: FilterModuleContext,
): Promise<Filter> {
  let ns: Record<string, unknown>;
  try {
    ns = await importFresh(spec.module);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw memberError(spec, `cannot load module ${spec.module}`, code === 'ENOENT' ? 'file not found' : err);
  }
  let value = defaultExport(ns);
  if (value === undefined) {
    throw memberError(spec, `module ${spec.module}`, 'no default export (export a Filter or a factory)');
  }
  if (typeof value === 'function') {
    try {
      value = await (value as FilterFactory)(spec.options ?? {}, context);
    } catch (err) {
      throw memberError(spec, `module ${spec.module}: the factory failed`, err);
    }
  }
  const problem = filterShapeProblem(value);
  if (problem !== undefined) throw memberError(spec, `module ${spec.module}: not a filter`, problem);
  return value as Filter;
}

/** Build one member. */
async function buildMember(spec: MemberSpec, ctx: BuildPipelineContext): Promise<PipelineMember> {
  const logger = ctx.logger.child({ member: spec.name });
  let filter: Filter;
  if (spec.kind === 'builtin') {
    filter = createDefaultFilter({ header: ctx.stampHeader }) as Filter;
  } else if (spec.kind === 'module') {
    filter = await loadModule(spec, { logger, metrics: new ModuleRegistry(ctx.metrics.registry) });
  } else {
    const metrics = ctx.metrics;
    metrics.memberBreakerState(spec.name, 'closed');
    try {
      filter = upstreamFilter({
        address: spec.address,
        name: spec.name,
        timeouts: spec.timeouts,
        ...(spec.onFailure === undefined ? {} : { onFailure: spec.onFailure }),
        ...(spec.breaker === undefined ? {} : { breaker: spec.breaker }),
        onEvent: (event) => metrics.upstreamEvent(spec.name, event),
        logger,
      });
    } catch (err) {
      throw memberError(spec, `upstream ${spec.address}`, err);
    }
  }
  const member: PipelineMember = { name: spec.name, filter, dryRun: spec.dryRun };
  if (spec.when !== undefined) {
    try {
      member.when = parseMemberCondition(spec.when, {
        ...(spec.where.file === undefined ? {} : { file: spec.where.file }),
        field: `${spec.where.field}.when`,
      });
    } catch (err) {
      if (!(err instanceof MilterConfigError)) throw memberError(spec, 'when', err);
      // The condition's message names the field (`filters[1].when.daemon-port: ...`); locate it at the entry.
      const { file, line, column } = spec.where;
      const text =
        file !== undefined && err.message.startsWith(`${file}: `)
          ? err.message.slice(file.length + 2)
          : err.message;
      throw new MilterConfigError(
        text,
        {
          ...(file === undefined ? {} : { file }),
          ...(line === undefined ? {} : { line }),
          ...(column === undefined ? {} : { column }),
          ...(err.field === undefined ? {} : { field: err.field }),
        },
        { cause: err },
      );
    }
  }
  return member;
}

/**
 * Build the daemon's filter: the members in order as one pipeline, under the shutdown policy. Rejects
 * with the first member's problem (a located MilterConfigError); nothing is half-built then.
 */
export async function buildDaemonPipeline(
  specs: readonly MemberSpec[],
  policy: ShutdownPolicy,
  ctx: BuildPipelineContext,
): Promise<BuiltPipeline> {
  const members: PipelineMember[] = [];
  for (const spec of specs) members.push(await buildMember(spec, ctx));
  const only = members[0];
  const plain = only !== undefined && only.when === undefined && only.dryRun !== true;
  if (members.length === 1 && specs[0]?.kind === 'builtin' && plain) {
    // The default pipeline, the stamp alone: run it as it always ran (same negotiation and bytes on the
    // wire, no per-member layer), so a daemon without filters behaves exactly as before.
    // Why not an ordinary member (measured 2026-12-06 with Postfix 3.x's offer, 0x1fffff): the pipeline keeps
    // headers coming for any member that may add one (it tracks the MTA's header list), and asks EOH with
    // them, so the OPTNEG reply would change from protocol 0x1870 (NOHDRS|NOEOH) to 0xc1890 (NR_HDR|NR_EOH)
    // and every message would bring each header and EOH to milterd (15 headers: 22 commands instead of 6,
    // ~1.8x the CPU per message in testFilter) for a filter that reads none. Replies and the X-Milterd
    // bytes at EOM were identical (test/cli/pipeline-daemon.test.ts pins the difference).
    const filter = withShutdownPolicy(only.filter, policy, {
      failureDecision: ctx.failureDecision,
    }) as Filter;
    return { filter, members };
  }
  const metrics = ctx.metrics;
  const debug = ctx.logger.child({ pipeline: true });
  const inner = pipeline(members, {
    failureDecision: ctx.failureDecision,
    onMemberEvent: (event: MemberEvent) => {
      metrics.memberEvent(event);
      if (debug.isLevelEnabled('debug')) logMemberEvent(debug, event);
    },
  });
  const filter = withShutdownPolicy(inner, policy, { failureDecision: ctx.failureDecision }) as Filter;
  return { filter, members };
}

/** One debug line per member decision (and per error or condition skip). */
function logMemberEvent(logger: Logger, event: MemberEvent): void {
  const base = { conn: event.connectionId, member: event.member, stage: event.stage };
  switch (event.type) {
    case 'decision':
      logger.debug(
        {
          ...base,
          decision: event.decision,
          ms: Math.round(event.durationMs * 1000) / 1000,
          ...(event.dryRun ? { dryRun: true } : {}),
          ...(event.applied ? {} : { applied: false }),
        },
        'member decision',
      );
      break;
    case 'error':
      logger.debug(
        { ...base, code: event.code, timeout: event.timeout, decision: event.decision },
        'member failed',
      );
      break;
    case 'skipped':
      logger.debug({ ...base, scope: event.scope }, 'member skipped by its condition');
      break;
    default:
      logger.debug({ ...base, event }, 'member event');
  }
}
