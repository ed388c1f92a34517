/**
 * `milterd health`: is the daemon that the same options, environment and config file describe alive?
 * Made for a container's HEALTHCHECK, which runs in a process of its own: it resolves the settings exactly
 * as `serve` does (command line > environment > config file > default), so a mounted config file that
 * moves or turns off the admin endpoint is probed where the daemon really is.
 *
 * - admin endpoint on: `GET /healthz` must answer 200 (liveness: the event loop runs);
 * - admin endpoint off: a milter negotiation on the first `listen` socket (what an MTA does). A daemon that
 *   accepts the connection and closes it before negotiating (draining, or at its connection limit) is
 *   alive too: only a live event loop does that. Refused, missing socket or timeout: unhealthy.
 *
 * Exit 0 healthy, 1 unhealthy (Docker's and podman's HEALTHCHECK convention), 3 invalid configuration.
 * Prints one line saying what was probed (the runtime keeps it in the health log).
 */
import http from 'node:http';
import { MilterClient } from '../client/index.js';
import { MilterError } from '../errors.js';
import { parseSocketSpec, type SocketSpec } from '../socket-spec.js';
import { resolveSettings, type SettingOverrides } from './config.js';
import { EXIT, type ExitCode } from './exit-codes.js';

/** Each probe gives up after this; well below the image's HEALTHCHECK --timeout (5 s), which also covers Node's start. */
export const HEALTH_PROBE_TIMEOUT_MS = 2_000;

/** Options of {@link health}. */
export interface HealthOptions {
  overrides: SettingOverrides;
  configFile: string | undefined;
  stdout: (text: string) => void;
  /** Default {@link HEALTH_PROBE_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/** Where to connect to reach a socket bound to `spec`: the wildcard addresses mean loopback. */
export function probeTarget(spec: SocketSpec): SocketSpec {
  if (spec.kind !== 'inet') return spec;
  if (spec.host === '0.0.0.0') return { ...spec, host: '127.0.0.1' };
  if (spec.host === '::') return { ...spec, host: '::1' };
  return spec;
}

function getHealthz(spec: Extract<SocketSpec, { kind: 'inet' }>, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: spec.host, port: spec.port, family: spec.family, path: '/healthz', timeout: timeoutMs },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  const message = err instanceof Error ? err.message : String(err);
  return code !== undefined && !message.includes(code) ? `${message} (${code})` : message;
}

/** Probe the daemon; resolves with the exit code. Rejects with MilterConfigError for a bad config. */
export async function health(options: HealthOptions): Promise<ExitCode> {
  const { settings } = await resolveSettings(options.overrides, options.configFile);
  const timeoutMs = options.timeoutMs ?? HEALTH_PROBE_TIMEOUT_MS;
  const healthy = (what: string): ExitCode => {
    options.stdout(`healthy: ${what}\n`);
    return EXIT.OK;
  };
  const unhealthy = (what: string): ExitCode => {
    options.stdout(`unhealthy: ${what}\n`);
    return EXIT.RUNTIME;
  };

  if (settings.admin !== 'off') {
    const target = probeTarget(parseSocketSpec(settings.admin, { defaultHost: 'loopback' }));
    if (target.kind !== 'inet') return unhealthy(`admin endpoint ${settings.admin} is not inet`);
    const where = `GET http://${target.family === 6 ? `[${target.host}]` : target.host}:${target.port}/healthz`;
    try {
      const status = await getHealthz(target, timeoutMs);
      return status === 200 ? healthy(`${where}: ${status}`) : unhealthy(`${where}: ${status}`);
    } catch (err) {
      return unhealthy(`${where}: ${reason(err)}`);
    }
  }

  const listen = settings.listen[0];
  if (listen === undefined) return unhealthy('no listen socket configured');
  const target = probeTarget(parseSocketSpec(listen));
  const where = `admin endpoint off; milter negotiation on ${listen}`;
  try {
    const client = await MilterClient.connect(target, { timeoutMs });
    await client.quit().catch(() => client.close());
    return healthy(`${where}: version ${client.negotiated.version}`);
  } catch (err) {
    // Accepted, then closed before negotiating: milterd's answer while draining or at its connection limit
    // (the client wraps that closing, a MilterError, as the cause; a failed connect has an errno cause).
    if (
      err instanceof MilterError &&
      err.code === 'ERR_MILTER_CONNECTION_CLOSED' &&
      err.cause instanceof MilterError
    ) {
      return healthy(`${where}: ${err.message}`);
    }
    return unhealthy(`${where}: ${reason(err)}`);
  }
}
