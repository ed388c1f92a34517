/**
 * The TLS files of a `rediss://` store (`--store-tls-ca`, `--store-tls-cert`, `--store-tls-key`), read
 * once at start and checked there: an unreadable file, one that holds no certificate, a certificate
 * without its key or a key that does not match it is a configuration problem (exit 3, listed by
 * check-config), not a TLS error repeated on every reconnect while mail flows unlimited.
 * Without them a TLS store is checked against Node's CAs (its bundled list, plus NODE_EXTRA_CA_CERTS).
 */
import { X509Certificate } from 'node:crypto';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { MilterConfigError } from '../errors.js';
import type { RedisStoreTls } from '../policy/redis-store.js';
import { parseStoreUrl, redactStoreUrl } from '../policy/store-url.js';
import { FILE_SETTINGS, SETTINGS, type DaemonSettings, type SettingSource } from './options.js';

/** Largest TLS file read (a CA bundle of a few hundred certificates fits many times). */
const MAX_TLS_FILE_BYTES = 1024 * 1024;

type TlsKey = (typeof FILE_SETTINGS)[number];

/**
 * Read and check the store's TLS files. `checkUrl` false when the store URL itself already has a problem
 * (its value is then the default, and "not a TLS URL" would be a false lead).
 */
export async function readStoreTls(
  settings: DaemonSettings,
  sources: Record<keyof DaemonSettings, SettingSource>,
  where: { configFile: string | undefined; checkUrl: boolean },
): Promise<{ tls: RedisStoreTls | undefined; problems: MilterConfigError[] }> {
  const problems: MilterConfigError[] = [];
  const given = FILE_SETTINGS.filter((k) => settings[k] !== undefined);
  if (given.length === 0) return { tls: undefined, problems };
  // Named as the operator wrote it: the flag, the variable or the config field (both when unset).
  const name = (key: TlsKey): string => {
    const def = SETTINGS[key];
    const flag = /--[a-z-]+/.exec(def.flags)?.[0] ?? key;
    if (sources[key] === 'cli') return flag;
    if (sources[key] === 'env') return def.env;
    if (sources[key] === 'file') return def.path.join('.');
    return `${flag} (${def.path.join('.')})`;
  };
  const problem = (key: TlsKey, message: string, cause?: unknown): void => {
    const field = SETTINGS[key].path.join('.');
    const file = sources[key] === 'file' ? where.configFile : undefined;
    problems.push(
      new MilterConfigError(
        `${name(key)}: ${message}`,
        { ...(file === undefined ? {} : { file }), field },
        { cause },
      ),
    );
  };
  const first = given[0] as TlsKey;
  if (where.checkUrl) {
    const location = parseStoreUrl(settings.store);
    if (location.kind !== 'redis' || !location.tls) {
      problem(
        first,
        `the store is not a TLS URL (rediss://, rediss+sentinel:// or rediss+cluster://): ${redactStoreUrl(settings.store)}`,
      );
    }
  }
  if ((settings.storeTlsCert === undefined) !== (settings.storeTlsKey === undefined)) {
    problem(
      settings.storeTlsCert === undefined ? 'storeTlsKey' : 'storeTlsCert',
      `a client certificate needs both ${name('storeTlsCert')} and ${name('storeTlsKey')}`,
    );
  }
  const read: Partial<Record<TlsKey, Buffer>> = {};
  for (const key of given) {
    const file = settings[key] as string;
    try {
      read[key] = await readSmallFile(file);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
      problem(key, `cannot read ${file}: ${why}`, err);
    }
  }
  if (read.storeTlsCa !== undefined) {
    const why = certificatesProblem(read.storeTlsCa);
    if (why !== undefined) problem('storeTlsCa', `${settings.storeTlsCa as string}: ${why}`);
  }
  if (read.storeTlsCert !== undefined) {
    const why = certificatesProblem(read.storeTlsCert);
    if (why !== undefined) problem('storeTlsCert', `${settings.storeTlsCert as string}: ${why}`);
    else if (read.storeTlsKey !== undefined) {
      try {
        // Parses the key and checks that it belongs to the certificate.
        createSecureContext({ cert: read.storeTlsCert, key: read.storeTlsKey });
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        problem(
          'storeTlsKey',
          `${settings.storeTlsKey as string}: not the key of ${name('storeTlsCert')} (${why})`,
          err,
        );
      }
    }
  }
  if (problems.length > 0) return { tls: undefined, problems };
  return {
    tls: {
      ...(read.storeTlsCa === undefined ? {} : { ca: read.storeTlsCa }),
      ...(read.storeTlsCert === undefined ? {} : { cert: read.storeTlsCert }),
      ...(read.storeTlsKey === undefined ? {} : { key: read.storeTlsKey }),
    },
    problems,
  };
}

/** A regular file of at most MAX_TLS_FILE_BYTES (a FIFO or a device must not hang or flood the start). */
async function readSmallFile(file: string): Promise<Buffer> {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore the flag).
  const handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new Error('not a regular file');
    if (stat.size > MAX_TLS_FILE_BYTES) throw new Error(`larger than ${MAX_TLS_FILE_BYTES} bytes`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** Why a PEM text is not a list of certificates, or undefined when it is one. */
function certificatesProblem(pem: Buffer): string | undefined {
  const blocks = pem
    .toString('latin1')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  if (blocks === null) return 'no PEM certificate (-----BEGIN CERTIFICATE-----) in it';
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `certificate ${i + 1} does not parse (${err instanceof Error ? err.message : String(err)})`;
    }
  }
  return undefined;
}
