/**
 * TEMPORARY stand-in for src/pipeline (branches pipeline-core and upstream), so the daemon side builds
 * and its tests run before those land: the same names and shapes, a minimal sequential pipeline without
 * conditions, message model or upstreams. Replaced by re-exports from ../pipeline/ once merged.
 */
import type { ActionName, DecisionKind, Filter, FilterCallbackName, MacroStage } from '../filter.js';
import { FILTER_CALLBACKS } from '../filter.js';
import type { MilterErrorCode } from '../errors.js';
import type { FailureDecision } from '../session/types.js';
import type { BreakerState, CircuitBreakerOptions } from '../breaker.js';
import type { Logger } from 'pino';

export type MemberCondition = Record<string, unknown>;

export interface PipelineMember {
  name: string;
  filter: Filter;
  when?: MemberCondition;
  dryRun?: boolean;
}

export type MemberStage = FilterCallbackName;

interface MemberEventBase {
  member: string;
  connectionId: string;
  stage: MemberStage;
}
export interface MemberDecisionEvent extends MemberEventBase {
  type: 'decision';
  decision: DecisionKind | 'noreply';
  durationMs: number;
  dryRun: boolean;
  applied: boolean;
}
export interface MemberErrorEvent extends MemberEventBase {
  type: 'error';
  code: MilterErrorCode;
  timeout: boolean;
  durationMs: number;
  decision: FailureDecision;
  error: unknown;
}
export interface MemberSkippedEvent extends MemberEventBase {
  type: 'skipped';
  scope: 'connection' | 'message';
}
export interface MemberActionEvent extends MemberEventBase {
  type: 'action';
  action: ActionName;
  applied: boolean;
  reason?: 'dry-run' | 'not-negotiated';
}
export type MemberEvent = MemberDecisionEvent | MemberErrorEvent | MemberActionEvent | MemberSkippedEvent;

export interface PipelineOptions {
  name?: string;
  onMemberEvent?(event: MemberEvent): void;
  failureDecision?: FailureDecision;
}

export function parseMemberCondition(
  raw: unknown,
  where: { file?: string; field?: string },
): MemberCondition {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new Error(`${where.field ?? 'when'}: expected a mapping`);
  }
  return raw as MemberCondition;
}

type AnyCallback = (ctx: object, ...args: unknown[]) => unknown;

/** Sequential stand-in: each member in order, the first decision other than continue ends the stage. */
export function pipeline(members: readonly PipelineMember[], options: PipelineOptions = {}): Filter {
  const privs = new WeakMap<object, Map<string, unknown>>();
  const view = (ctx: object, name: string): object => {
    let m = privs.get(ctx);
    if (m === undefined) privs.set(ctx, (m = new Map()));
    const store = m;
    return new Proxy(ctx, {
      get: (t, p) => {
        if (p === 'priv') return store.get(name);
        const v = Reflect.get(t, p, t) as unknown;
        return typeof v === 'function' ? (v as AnyCallback).bind(t) : v;
      },
      set: (t, p, v) => {
        if (p === 'priv') store.set(name, v);
        else Reflect.set(t, p, v, t);
        return true;
      },
    });
  };
  const out: Record<string, unknown> = { name: options.name ?? 'pipeline' };
  const actions = new Set<string>();
  const macros: Partial<Record<MacroStage, string[]>> = {};
  for (const m of members) {
    for (const a of m.filter.actions ?? []) actions.add(a);
    for (const [stage, list] of Object.entries(m.filter.macros ?? {})) {
      const into = (macros[stage as MacroStage] ??= []);
      for (const x of list ?? []) if (!into.includes(x)) into.push(x);
    }
  }
  out.actions = [...actions];
  out.macros = macros;
  for (const cb of FILTER_CALLBACKS) {
    if (cb === 'negotiate') continue;
    const having = members.filter((m) => typeof (m.filter as Record<string, unknown>)[cb] === 'function');
    if (having.length === 0) continue;
    out[cb] = async (ctx: { id: string }, ...args: unknown[]) => {
      for (const m of having) {
        const started = performance.now();
        const fn = (m.filter as Record<string, unknown>)[cb] as AnyCallback;
        let result: unknown;
        try {
          result = await fn.call(m.filter, view(ctx, m.name), ...args);
        } catch (error) {
          options.onMemberEvent?.({
            type: 'error',
            member: m.name,
            connectionId: ctx.id,
            stage: cb,
            code: 'ERR_MILTER_CALLBACK_FAILED',
            timeout: false,
            durationMs: performance.now() - started,
            decision: options.failureDecision ?? 'tempfail',
            error,
          });
          if (cb === 'close' || cb === 'abort') continue;
          return options.failureDecision ?? 'tempfail';
        }
        const kind = (
          typeof result === 'object' && result !== null ? (result as { kind: string }).kind : result
        ) as DecisionKind | undefined;
        options.onMemberEvent?.({
          type: 'decision',
          member: m.name,
          connectionId: ctx.id,
          stage: cb,
          decision: kind ?? 'continue',
          durationMs: performance.now() - started,
          dryRun: m.dryRun === true,
          applied: m.dryRun !== true,
        });
        if (m.dryRun !== true && kind !== undefined && kind !== 'continue') return result;
      }
      return undefined;
    };
  }
  return out as Filter;
}

export interface UpstreamOptions {
  address: string;
  name?: string;
  timeouts?: { connectMs?: number; commandMs?: number; eomMs?: number };
  onFailure?: 'tempfail' | 'accept' | 'reject' | 'skip';
  breaker?: CircuitBreakerOptions;
  logger?: Logger;
  onEvent?(event: { type: 'breaker'; state: BreakerState } | { type: string }): void;
}

export function upstreamFilter(options: UpstreamOptions): Filter {
  return {
    connect() {
      throw new Error(`upstream members are not available yet (${options.address})`);
    },
  };
}
