/** Builders of DeliveryRecord snapshots for chain and rule tests. */
import type { DeliveryRecord, SessionCounters } from '../../../src/policy/types.js';
import { zeroCounters } from '../../../src/policy/types.js';

/** Overrides for `record()`; counters are merged into zeroed counters. */
export type RecordOverrides = Partial<Omit<DeliveryRecord, 'counters'>> & {
  counters?: Partial<SessionCounters>;
};

/** A record with zero counters, an IPv4 client and no HELO/auth, plus overrides. */
export function record(o: RecordOverrides = {}): DeliveryRecord {
  const counters: SessionCounters = { ...zeroCounters(), ...o.counters };
  return {
    connectionId: 'c1',
    event: 'message',
    client: { address: '192.0.2.10', hostname: 'client.example', port: 40000, family: 'inet' },
    helo: undefined,
    authenticated: undefined,
    macros: {},
    startedAt: 0,
    ageMs: 0,
    lastOutcome: undefined,
    recipient: undefined,
    clientStats: { concurrentSessions: 1, messagesInWindow: {} },
    ...o,
    attempts:
      o.attempts ??
      counters.messagesAccepted +
        counters.messagesDiscarded +
        counters.messagesRejected +
        counters.messagesTempfailed,
    failures: o.failures ?? counters.messagesRejected + counters.messagesTempfailed,
    counters,
  };
}
