/**
 * The daemon's policy store from its settings: nothing for `memory` (the policy makes its own in-process
 * store), else a RedisPolicyStore behind a GuardedStore (deadline, circuit breaker, metrics). Opening never
 * waits for Redis: a store that is down at start fails fast until it comes back, and each rule's
 * `on-store-error` applies meanwhile (mail is never held for it).
 */
import type { Logger } from 'pino';
import type { DaemonMetrics } from '../admin/observer.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import { GuardedStore } from '../policy/guarded-store.js';
import { createRedisPolicyStore, type RedisStoreTls } from '../policy/redis-store.js';
import { parseStoreUrl, redactStoreUrl } from '../policy/store-url.js';
import type { DaemonSettings } from './options.js';

/** Connection errors repeat on every reconnect attempt: one log line per this interval at most. */
const ERROR_LOG_INTERVAL_MS = 30_000;

/** Node's codes for a server certificate that does not chain to a trusted CA. */
const UNTRUSTED_CERT = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);

/** The log line of a store connection error: TLS refusals say what to configure. */
export function storeErrorMessage(err: Error): string {
  const code = String((err as NodeJS.ErrnoException).code ?? '');
  if (UNTRUSTED_CERT.has(code)) {
    return (
      "policy store TLS: the server's certificate is not trusted: give its CA with --store-tls-ca " +
      '(store.tlsCa) or NODE_EXTRA_CA_CERTS'
    );
  }
  if (/^ERR_SSL_.*CERTIFICATE_REQUIRED$/.test(code)) {
    return (
      'policy store TLS: the server wants a client certificate: give one with --store-tls-cert and ' +
      '--store-tls-key (store.tlsCert, store.tlsKey)'
    );
  }
  if (/^(ERR_SSL_|ERR_TLS_|CERT_)/.test(code)) return 'policy store TLS handshake failed';
  return 'policy store connection error';
}

export async function openPolicyStore(
  settings: DaemonSettings,
  options: {
    logger: Logger;
    metrics: DaemonMetrics;
    /** The TLS files, read at start (store-tls.ts); undefined: Node's CAs, no client certificate. */
    tls?: RedisStoreTls | undefined;
  },
): Promise<GuardedStore | undefined> {
  const location = parseStoreUrl(settings.store);
  if (location.kind === 'memory') return undefined;
  const { logger, metrics } = options;
  const url = redactStoreUrl(settings.store);
  // Per kind of error (a TLS refusal must not hide behind the connection reset logged just before it): one
  // line per interval, then a "suppressed N similar lines" summary.
  const limiter = new LogRateLimiter({ logger, lines: 1, windowMs: ERROR_LOG_INTERVAL_MS });
  const redis = await createRedisPolicyStore({
    url: location,
    prefix: settings.storePrefix,
    leaseTtlMs: settings.storeLeaseTtl,
    batchIntervalMs: settings.storeBatchInterval,
    hashAddresses: settings.storeHashAddresses,
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    onError: (err) => {
      const msg = storeErrorMessage(err);
      if (limiter.allow(msg)) logger.warn({ err, store: url }, msg);
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
