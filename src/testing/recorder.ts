/**
 * Callback log for {@link testFilter}: wraps a filter so every callback call is recorded (arguments,
 * `priv` at entry, result or error) without changing what the session sees. Only the callbacks the filter
 * defines are wrapped (an absent callback is a negotiated-away step), and a synchronous callback stays
 * synchronous (the session answers it without a promise).
 */
import { FILTER_CALLBACKS, type Filter } from '../filter.js';
import type { CallbackName, CallbackRecord } from './types.js';

const CALLBACKS: readonly CallbackName[] = FILTER_CALLBACKS;

type AnyCallback = (this: unknown, ctx: { priv: unknown }, ...args: unknown[]) => unknown;

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (
    v !== null &&
    (typeof v === 'object' || typeof v === 'function') &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

function copyArg(a: unknown): unknown {
  return Buffer.isBuffer(a) ? Buffer.from(a) : a;
}

/**
 * A filter that behaves exactly like `filter` and appends one {@link CallbackRecord} to `log` per call.
 * Options (`actions`, `macros`, `noReply`, ...) are read from `filter` once, like the session does.
 */
export function recordCallbacks<P>(filter: Filter<P>, log: Array<CallbackRecord<P>>): Filter<P> {
  const wrapped: Filter<P> = {};
  if (filter.name !== undefined) wrapped.name = filter.name;
  if (filter.actions !== undefined) wrapped.actions = filter.actions;
  if (filter.macros !== undefined) wrapped.macros = filter.macros;
  if (filter.noReply !== undefined) wrapped.noReply = filter.noReply;
  if (filter.headerLeadingSpace !== undefined) wrapped.headerLeadingSpace = filter.headerLeadingSpace;
  if (filter.rejectedRecipients !== undefined) wrapped.rejectedRecipients = filter.rejectedRecipients;
  const slots = wrapped as Record<CallbackName, unknown>;
  for (const name of CALLBACKS) {
    const original = (filter as Record<CallbackName, unknown>)[name];
    if (typeof original !== 'function') continue;
    const fn = original as AnyCallback;
    slots[name] = function recorded(ctx: { priv: unknown }, ...args: unknown[]): unknown {
      const record: CallbackRecord<P> = {
        callback: name,
        args: args.map(copyArg),
        priv: ctx.priv as P | undefined,
      };
      log.push(record);
      let r: unknown;
      try {
        r = fn.call(filter, ctx, ...args);
      } catch (err) {
        record.error = err;
        throw err;
      }
      if (!isThenable(r)) {
        record.result = r;
        return r;
      }
      return Promise.resolve(r).then(
        (value) => {
          record.result = value;
          return value;
        },
        (err: unknown) => {
          record.error = err;
          throw err;
        },
      );
    };
  }
  return wrapped;
}
