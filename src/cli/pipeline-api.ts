/**
 * The pipeline API the daemon builds on, in one place: src/pipeline (pipeline-core), and a TEMPORARY
 * stand-in for `upstreamFilter` (branch upstream) until that lands; then this file re-exports it too.
 */
import type { Logger } from 'pino';
import type { BreakerState, CircuitBreakerOptions } from '../breaker.js';
import type { Filter } from '../filter.js';

export { parseMemberCondition, pipeline, type MemberEvent, type PipelineMember } from '../pipeline/index.js';

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
