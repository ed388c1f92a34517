/** Builders of DeliveryRecord snapshots for chain and rule tests. */
import type { DeliveryRecord, SessionCounters } from '../../../src/policy/types.js';

/** Overrides for `record()`; counters are merged into zeroed counters. */
export type RecordOverrides = Partial<Omit<DeliveryRecord, 'counters'>> & {
  counters?: Partial<SessionCounters>;
};

/** A record with zero counters, an IPv4 client and no HELO/auth, plus overrides. */
export function record(o: RecordOverrides = {}): DeliveryRecord {
  const counters: SessionCounters = {
    messagesAccepted: 0,
    messagesRejected: 0,
    messagesTempfailed: 0,
    messagesDiscarded: 0,
    messagesAborted: 0,
    recipientsAccepted: 0,
    recipientsRejected: 0,
    bytesReceived: 0,
    ...o.counters,
  };
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
