/**
 * The daemon's policy store from its settings: nothing for `memory` (the policy makes its own in-process
 * store), else a RedisPolicyStore behind a GuardedStore (deadline, circuit breaker, metrics). Opening never
 * waits for Redis: a store that is down at start fails fast until it comes back, and each rule's
 * `on-store-error` applies meanwhile (mail is never held for it).
 */
import type { Logger } from 'pino';
import type { DaemonMetrics } from '../admin/observer.js';
import { GuardedStore } from '../policy/guarded-store.js';
import { createRedisPolicyStore } from '../policy/redis-store.js';
import { parseStoreUrl, redactStoreUrl } from '../policy/store-url.js';
import type { DaemonSettings } from './options.js';

/** Connection errors repeat on every reconnect attempt: one log line per this interval at most. */
const ERROR_LOG_INTERVAL_MS = 30_000;

export async function openPolicyStore(
  settings: DaemonSettings,
  options: { logger: Logger; metrics: DaemonMetrics },
): Promise<GuardedStore | undefined> {
  const location = parseStoreUrl(settings.store);
  if (location.kind === 'memory') return undefined;
  const { logger, metrics } = options;
  const url = redactStoreUrl(settings.store);
  let lastErrorLog = Number.NEGATIVE_INFINITY;
  let suppressed = 0;
  const redis = await createRedisPolicyStore({
    url: location,
    prefix: settings.storePrefix,
    leaseTtlMs: settings.storeLeaseTtl,
    hashAddresses: settings.storeHashAddresses,
    onError: (err) => {
      const now = Date.now();
      if (now - lastErrorLog < ERROR_LOG_INTERVAL_MS) {
        suppressed++;
        return;
      }
      lastErrorLog = now;
      logger.warn({ err, store: url, suppressed }, 'policy store connection error');
      suppressed = 0;
    },
  });
  redis.client.on('ready', () => logger.info({ store: url }, 'policy store connected'));
  return new GuardedStore(redis, {
    timeoutMs: settings.storeTimeout,
    instances: settings.storeInstances,
    onCall: (e) => metrics.store.call(e),
    breaker: {
      onChange: (state, previous) => {
        metrics.store.breaker(state);
        const line = { store: url, state, previous };
        if (state === 'open') logger.warn(line, 'policy store circuit breaker open: on-store-error applies');
        else logger.info(line, `policy store circuit breaker ${state}`);
      },
    },
  });
}
