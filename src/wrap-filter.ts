/**
 * `wrapFilter`: the one way milterd wraps a filter (the shutdown policy, the test recorder, the reloadable
 * daemon filter). It does once what each wrapper needs: pass the negotiation fields through (or replace
 * some), forward every callback the inner filter defines with the session's very context (so `priv` and
 * `messagePriv` are the inner filter's own), and let the wrapper take over the callbacks it implements.
 *
 * A callback the inner filter does not define stays undefined on the wrapper unless the wrapper implements
 * it: an absent callback is a negotiated-away protocol step, and a wrapper must not turn it on by accident.
 */
import { FILTER_CALLBACKS, type Filter, type FilterCallbackName } from './filter.js';

/** The negotiation fields of a filter: what the session reads besides the callbacks. */
export const FILTER_FIELDS = [
  'name',
  'actions',
  'macros',
  'noReply',
  'headerLeadingSpace',
  'rejectedRecipients',
] as const;
export type FilterField = (typeof FILTER_FIELDS)[number];
export type FilterFields<P = unknown, M = unknown> = Pick<Filter<P, M>, FilterField>;

/** Any callback, as the forwarding sees it: a context (with the session's `priv`) and the arguments. */
export type ForwardedCall = (ctx: { id: string; priv: unknown }, ...args: unknown[]) => unknown;

/** What a wrapper adds to the filter it wraps. Every hook is optional. */
export interface FilterHooks<P = unknown, M = unknown> {
  /** Negotiation fields that replace the inner filter's (a key given as undefined removes the field). */
  fields?: Partial<FilterFields<P, M>>;
  /**
   * Callbacks the wrapper implements itself, defined whether or not the inner filter has them; each calls
   * the inner filter's (or not) as it sees fit.
   */
  callbacks?: Partial<Omit<Filter<P, M>, FilterField>>;
  /**
   * Around every other callback the inner filter defines: `call()` runs the inner callback and its result
   * is what the session gets. Return a synchronous result for a synchronous one (the session answers those
   * without a microtask).
   */
  around?(
    name: FilterCallbackName,
    ctx: { id: string; priv: unknown },
    args: unknown[],
    call: () => unknown,
  ): unknown;
  /** The filter whose callback runs for this call (default: the inner filter). */
  target?(name: FilterCallbackName, ctx: { id: string; priv: unknown }): Filter<P, M>;
}

/**
 * A filter that behaves like `inner` plus `hooks`. `inner` is a filter, or a function returning the
 * current one: then the negotiation fields and which callbacks exist are read from it at every access
 * (a filter swapped at run time), else once, now.
 */
export function wrapFilter<P, M = unknown>(
  inner: Filter<P, M> | (() => Filter<P, M>),
  hooks: FilterHooks<P, M> = {},
): Filter<P, M> {
  const current = typeof inner === 'function' ? inner : (): Filter<P, M> => inner;
  const own = (hooks.callbacks ?? {}) as Partial<Record<FilterCallbackName, unknown>>;
  const fields = hooks.fields ?? {};
  const slots = (f: Filter<P, M>): Record<string, unknown> => f as unknown as Record<string, unknown>;

  const forwarders = new Map<FilterCallbackName, ForwardedCall>();
  for (const name of FILTER_CALLBACKS) {
    if (Object.hasOwn(own, name)) continue;
    forwarders.set(name, function forwarded(ctx, ...args) {
      const target = hooks.target?.(name, ctx) ?? current();
      const fn = slots(target)[name];
      if (typeof fn !== 'function') return undefined;
      const call = (): unknown => (fn as ForwardedCall).call(target, ctx, ...args);
      return hooks.around ? hooks.around(name, ctx, args, call) : call();
    });
  }
  const field = (name: FilterField): unknown =>
    Object.hasOwn(fields, name) ? fields[name] : slots(current())[name];
  const callback = (name: FilterCallbackName): unknown =>
    Object.hasOwn(own, name)
      ? own[name]
      : typeof slots(current())[name] === 'function'
        ? forwarders.get(name)
        : undefined;

  const wrapped: Record<string, unknown> = {};
  if (typeof inner === 'function') {
    for (const name of FILTER_FIELDS)
      Object.defineProperty(wrapped, name, { get: () => field(name), enumerable: true });
    for (const name of FILTER_CALLBACKS)
      Object.defineProperty(wrapped, name, { get: () => callback(name), enumerable: true });
  } else {
    for (const name of FILTER_FIELDS) {
      const v = field(name);
      if (v !== undefined) wrapped[name] = v;
    }
    for (const name of FILTER_CALLBACKS) {
      const v = callback(name);
      if (v !== undefined) wrapped[name] = v;
    }
  }
  return wrapped as Filter<P, M>;
}
