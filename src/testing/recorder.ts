/**
 * Callback log for {@link testFilter}: wraps a filter so every callback call is recorded (arguments,
 * `priv` at entry, result or error) without changing what the session sees. Only the callbacks the filter
 * defines are wrapped (an absent callback is a negotiated-away step), and a synchronous callback stays
 * synchronous (the session answers it without a promise).
 */
import type { Filter } from '../filter.js';
import { isThenable } from '../session/decision.js';
import { wrapFilter } from '../wrap-filter.js';
import type { CallbackRecord } from './types.js';

function copyArg(a: unknown): unknown {
  return Buffer.isBuffer(a) ? Buffer.from(a) : a;
}

/**
 * A filter that behaves exactly like `filter` and appends one {@link CallbackRecord} to `log` per call.
 * Options (`actions`, `macros`, `noReply`, ...) are read from `filter` once, like the session does.
 */
export function recordCallbacks<P>(filter: Filter<P>, log: Array<CallbackRecord<P>>): Filter<P> {
  return wrapFilter(filter, {
    around(name, ctx, args, call) {
      const record: CallbackRecord<P> = {
        callback: name,
        args: args.map(copyArg),
        priv: ctx.priv as P | undefined,
      };
      log.push(record);
      let r: unknown;
      try {
        r = call();
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
    },
  });
}
