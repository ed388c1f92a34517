/**
 * `milterd store ADDRESS [--clear]`: what the fleet's shared policy store holds for one client, read the
 * way the daemons that the same options, environment and config file describe count it (store URL,
 * prefix, hashed addresses, TLS, and the policy's client prefix and windows). It answers the operator's
 * "why does this client get its 421?" (its live sessions, its messages in each window of the rules), and
 * `--clear` forgets the client on every instance at once (its lease set and message logs are deleted; a
 * session still open renews its lease at its next renewal).
 *
 * The address is the client's as the MTA reports it: an IP address is counted under its network at the
 * policy's client prefix, anything else (a Unix socket path) under itself.
 *
 * Prints one JSON object. Exit 0; 2 an empty address; 3 an invalid configuration, or the in-process store
 * (nothing shared to read); 1 the store did not answer.
 */
import { MilterConfigError } from '../errors.js';
import { createShutdownPolicy } from '../policy/rules.js';
import { createRedisPolicyStore } from '../policy/redis-store.js';
import { parseStoreUrl, redactStoreUrl } from '../policy/store-url.js';
import { formatConfigProblem, loadConfiguration, type SettingOverrides } from './config.js';
import { EXIT, type ExitCode } from './exit-codes.js';

/** How long the command waits for the store's connection (a dead Redis must not hang a shell). */
export const STORE_COMMAND_TIMEOUT_MS = 5_000;

/** Options of {@link storeCommand}. */
export interface StoreCommandOptions {
  address: string;
  clear: boolean;
  overrides: SettingOverrides;
  configFile: string | undefined;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Default {@link STORE_COMMAND_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/** Read (and with `clear` forget) one client's shared counts; resolves with the exit code. */
export async function storeCommand(options: StoreCommandOptions): Promise<ExitCode> {
  const loaded = await loadConfiguration(options.overrides, options.configFile);
  if (loaded.problems.length > 0 || loaded.policy === undefined) {
    throw MilterConfigError.of(loaded.problems, formatConfigProblem);
  }
  const { settings } = loaded.resolved;
  const location = parseStoreUrl(settings.store);
  if (location.kind !== 'redis') {
    throw new MilterConfigError(
      'the store is "memory": each milterd counts in its own process, there is nothing shared to read ' +
        '(give --store, MILTERD_STORE or store.url)',
      { field: 'store.url' },
    );
  }
  // The client key as the daemons make it: the policy's client prefix (IPv6 /64 by default).
  const policy = createShutdownPolicy(loaded.policy);
  const key = policy.clientKey(options.address);
  if (key === undefined) {
    options.stderr("milterd: store: an empty address is not counted (give the client's address)\n");
    return EXIT.USAGE;
  }
  const url = redactStoreUrl(settings.store);
  const store = await createRedisPolicyStore({
    url: location,
    prefix: settings.storePrefix,
    leaseTtlMs: settings.storeLeaseTtl,
    hashAddresses: settings.storeHashAddresses,
    batchIntervalMs: 0,
    ...(loaded.storeTls === undefined ? {} : { tls: loaded.storeTls }),
  });
  try {
    await store.ready(options.timeoutMs ?? STORE_COMMAND_TIMEOUT_MS);
    const windows = policy.clientWindows;
    const [sessions, ...messages] = await Promise.all([
      store.sessionCount(key),
      ...windows.map((w) => store.messageCount(key, w)),
    ]);
    const messagesInWindow: Record<string, number> = {};
    windows.forEach((w, i) => (messagesInWindow[String(w)] = messages[i] ?? 0));
    const report: Record<string, unknown> = {
      store: url,
      client: options.address,
      key,
      concurrentSessions: sessions,
      messagesInWindow,
    };
    if (options.clear) report.cleared = (await store.forget(key, windows)) > 0;
    options.stdout(`${JSON.stringify(report)}\n`);
    return EXIT.OK;
  } catch (err) {
    options.stderr(`milterd: store ${url}: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT.RUNTIME;
  } finally {
    await store.close();
  }
}
