/**
 * Turning a {@link PolicySetting} into a validated policy and a running ShutdownPolicy wired to metrics.
 */
import type { Logger } from 'pino';
import type { DaemonMetrics } from '../admin/observer.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';
import {
  createShutdownPolicy,
  defaultPolicyConfig,
  loadPolicyFile,
  parsePolicy,
  type PolicyConfig,
  type PolicyStore,
  type ShutdownPolicy,
} from '../policy/index.js';
import type { PolicySetting } from './options.js';

/**
 * Load and validate the policy a setting names. Rejects with MilterConfigError (file, line, field) for an
 * unreadable or invalid file or inline policy.
 */
export async function loadPolicySetting(setting: PolicySetting): Promise<PolicyConfig> {
  switch (setting.kind) {
    case 'default':
      return defaultPolicyConfig();
    case 'file':
      return loadPolicyFile(setting.path);
    case 'inline':
      return parsePolicy(setting.source, setting.file);
  }
}

/** A short description for logs: `default`, the file path, or `inline (FILE)`. */
export function describePolicy(setting: PolicySetting): string {
  return setting.kind === 'default'
    ? 'default'
    : setting.kind === 'file'
      ? setting.path
      : `inline (${setting.file})`;
}

/**
 * Build the ShutdownPolicy for `config` and route its events into the metrics. `store` carries the
 * cross-session counts over a reload.
 */
export function buildPolicy(
  config: PolicyConfig,
  options: { logger: Logger; metrics: DaemonMetrics; logLimiter?: LogRateLimiter; store?: PolicyStore },
): ShutdownPolicy {
  const policy = createShutdownPolicy(config, {
    logger: options.logger,
    ...(options.logLimiter === undefined ? {} : { logLimiter: options.logLimiter }),
    ...(options.store === undefined ? {} : { store: options.store }),
  });
  const m = options.metrics;
  policy.on('fired', (e) => m.policyFired(e.reason));
  policy.on('decision', (e) => m.policyDecisions.inc({ reason: e.reason, mode: e.mode }));
  policy.on('hookError', (e) => m.errors.inc({ code: e.error.code }));
  return policy;
}
