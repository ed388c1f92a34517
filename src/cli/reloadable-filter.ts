/**
 * A filter whose implementation can be swapped at run time (SIGHUP reload) without touching connections
 * in flight: each milter connection is pinned to the filter that was current when its first callback ran
 * and keeps it until `close`; new connections negotiate with, and use, the new one.
 */
import type { Filter, FilterCallbackName } from '../filter.js';
import { wrapFilter } from '../wrap-filter.js';

/** Holder of the current filter; `filter` is what the milter server is given. */
export class ReloadableFilter {
  #current: Filter<unknown>;
  readonly #pinned = new Map<string, Filter<unknown>>();
  /**
   * The filter handed to `createMilterServer`: negotiation reads the fields and which callbacks exist from
   * the current filter; each callback runs on the connection's pinned one.
   */
  readonly filter: Filter<unknown>;

  constructor(initial: Filter<unknown>) {
    this.#current = initial;
    this.filter = wrapFilter(() => this.#current, { target: (name, ctx) => this.#target(name, ctx.id) });
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

  #target(name: FilterCallbackName, id: string): Filter<unknown> {
    let target = this.#pinned.get(id);
    if (target === undefined) {
      target = this.#current;
      this.#pinned.set(id, target);
    }
    // close ends the pin whatever happens; a later callback (SMFIC_QUIT_NC) pins afresh.
    if (name === 'close') this.#pinned.delete(id);
    return target;
  }
}
