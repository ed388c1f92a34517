/**
 * A circuit breaker for a dependency that can fail (an upstream milter, the policy store): after
 * `failures` consecutive failures it opens and calls are failed fast for `openMs`; then one probe is let
 * through (half-open); its success closes the breaker, its failure opens it again for another `openMs`.
 * No timers: the state advances when asked, on the given clock.
 */
import { DEFAULTS } from './defaults.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. Default {@link DEFAULTS.breakerFailures}. */
  failures?: number;
  /** How long it stays open before a probe. Default {@link DEFAULTS.breakerOpenMs}. */
  openMs?: number;
  /** Clock in ms (tests pass a fake one). Default `Date.now`. */
  now?: () => number;
  /** Called on every state change (metrics, one log line). */
  onChange?: (state: BreakerState, previous: BreakerState) => void;
}

export class CircuitBreaker {
  #state: BreakerState = 'closed';
  #failures = 0;
  #openedAt = 0;
  #probing = false;
  readonly #threshold: number;
  readonly #openMs: number;
  readonly #now: () => number;
  readonly #onChange: ((state: BreakerState, previous: BreakerState) => void) | undefined;

  constructor(options: CircuitBreakerOptions = {}) {
    this.#threshold = Math.max(1, options.failures ?? DEFAULTS.breakerFailures);
    this.#openMs = Math.max(0, options.openMs ?? DEFAULTS.breakerOpenMs);
    this.#now = options.now ?? Date.now;
    this.#onChange = options.onChange;
  }

  get state(): BreakerState {
    return this.#state;
  }

  /**
   * May a call go ahead now? Closed: yes. Open: no, until `openMs` passed; then the breaker turns
   * half-open and this one caller is the probe. Half-open: no while the probe is out.
   */
  allow(): boolean {
    if (this.#state === 'closed') return true;
    if (this.#state === 'open') {
      if (this.#now() - this.#openedAt < this.#openMs) return false;
      this.#set('half-open');
    }
    if (this.#probing) return false;
    this.#probing = true;
    return true;
  }

  /** The call succeeded. */
  success(): void {
    this.#failures = 0;
    this.#probing = false;
    if (this.#state !== 'closed') this.#set('closed');
  }

  /** The call failed (error or deadline). */
  failure(): void {
    this.#probing = false;
    this.#failures++;
    if (this.#state === 'half-open' || (this.#state === 'closed' && this.#failures >= this.#threshold)) {
      this.#openedAt = this.#now();
      this.#set('open');
    }
  }

  #set(state: BreakerState): void {
    const previous = this.#state;
    this.#state = state;
    this.#onChange?.(state, previous);
  }
}
