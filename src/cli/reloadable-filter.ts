/**
 * A filter whose implementation can be swapped at run time (SIGHUP reload) without touching connections
 * in flight: each milter connection is pinned to the filter that was current when its first callback ran
 * and keeps it until `close`; new connections negotiate with, and use, the new one.
 */
import { FILTER_CALLBACKS, type Filter, type FilterCallbackName } from '../filter.js';

type CallbackName = FilterCallbackName;

const CALLBACKS: ReadonlySet<string> = new Set<string>(FILTER_CALLBACKS);

type AnyCallback = (ctx: { id: string }, ...args: unknown[]) => unknown;

/** Holder of the current filter; `filter` is what the milter server is given. */
export class ReloadableFilter {
  #current: Filter<unknown>;
  readonly #pinned = new Map<string, Filter<unknown>>();
  /** The proxy handed to `createMilterServer`. */
  readonly filter: Filter<unknown>;

  constructor(initial: Filter<unknown>) {
    this.#current = initial;
    const cache = new Map<string, AnyCallback>();
    this.filter = new Proxy({} as Filter<unknown>, {
      // Negotiation reads properties (callback presence, actions, macros, noReply) from the current filter.
      get: (_target, prop) => {
        if (typeof prop !== 'string') return undefined;
        const value = (this.#current as Record<string, unknown>)[prop];
        if (!CALLBACKS.has(prop)) return value;
        if (typeof value !== 'function') return undefined;
        let forward = cache.get(prop);
        if (forward === undefined) {
          forward = (ctx, ...args) => this.#call(prop as CallbackName, ctx, args);
          cache.set(prop, forward);
        }
        return forward;
      },
      has: (_target, prop) => prop in this.#current,
    });
  }

  /** The filter new connections get. */
  get current(): Filter<unknown> {
    return this.#current;
  }

  /** Connections still pinned to some filter (open connections that ran a callback). */
  get pinnedCount(): number {
    return this.#pinned.size;
  }

  /** Make `next` the filter of every connection that starts from now on. */
  replace(next: Filter<unknown>): void {
    this.#current = next;
  }

  #call(name: CallbackName, ctx: { id: string }, args: unknown[]): unknown {
    let target = this.#pinned.get(ctx.id);
    if (target === undefined) {
      target = this.#current;
      this.#pinned.set(ctx.id, target);
    }
    const callback = (target as Record<string, unknown>)[name] as AnyCallback | undefined;
    if (name !== 'close') return callback === undefined ? undefined : callback.call(target, ctx, ...args);
    // close ends the pin whatever happens; a later callback (SMFIC_QUIT_NC) pins afresh.
    this.#pinned.delete(ctx.id);
    return callback === undefined ? undefined : callback.call(target, ctx, ...args);
  }
}
