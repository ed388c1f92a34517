/**
 * SIGHUP reloads read and parse the config file and the policy in a worker thread, so that the milter
 * keeps answering while YAML is parsed: even within the 1 MiB file limit, a file with 200k keys takes
 * the `yaml` package a second or more. The worker returns plain data (settings, policy config) or the
 * MilterConfigError's fields; the daemon builds the policy itself, on its own thread.
 *
 * This module is both sides: `loadReloadOffThread` (daemon) starts a worker on this same file, whose
 * top level then runs the load (only when started with the reload marker in `workerData`).
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { MilterConfigError, type ConfigErrorCode } from '../errors.js';
import type { PolicyConfig } from '../policy/index.js';
import { resolveSettings, type ResolvedSettings, type SettingOverrides } from './config.js';
import { loadPolicySetting } from './policy-source.js';

const MARKER = 'milterd-reload';

/** What a reload reads. */
export interface ReloadInput {
  overrides: SettingOverrides;
  configFile: string | undefined;
}

/** What a reload produced. */
export interface ReloadResult {
  resolved: ResolvedSettings;
  policy: PolicyConfig;
}

type WorkerReply =
  | { ok: true; result: ReloadResult }
  | {
      ok: false;
      config: boolean;
      message: string;
      code?: ConfigErrorCode;
      file?: string;
      line?: number;
      field?: string;
    };

/** The whole reload load, on whatever thread calls it. Rejects with MilterConfigError like serve's start. */
export async function loadReload(input: ReloadInput): Promise<ReloadResult> {
  const resolved = await resolveSettings(input.overrides, input.configFile);
  const policy = await loadPolicySetting(resolved.settings.policy);
  return { resolved, policy };
}

/**
 * {@link loadReload} in a worker thread. Rejects with a MilterConfigError carrying the same message,
 * file, line and field as the worker's, or with an Error when the worker failed in another way.
 */
export function loadReloadOffThread(input: ReloadInput): Promise<ReloadResult> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const worker = new Worker(new URL(import.meta.url), { workerData: { marker: MARKER, input } });
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      fn();
      void worker.terminate();
    };
    worker.once('message', (reply: WorkerReply) =>
      settle(() => {
        if (reply.ok) return resolve(reply.result);
        if (!reply.config) return reject(new Error(reply.message));
        const where = { file: reply.file, line: reply.line, field: reply.field };
        reject(new MilterConfigError(reply.message, where, reply.code ? { code: reply.code } : undefined));
      }),
    );
    worker.once('error', (err) => settle(() => reject(err)));
    worker.once('exit', (code) =>
      settle(() => reject(new Error(`configuration reload worker exited with code ${code}`))),
    );
  });
}

async function runInWorker(input: ReloadInput): Promise<WorkerReply> {
  try {
    return { ok: true, result: await loadReload(input) };
  } catch (err) {
    if (err instanceof MilterConfigError) {
      return {
        ok: false,
        config: true,
        message: err.message,
        code: err.code,
        ...(err.file === undefined ? {} : { file: err.file }),
        ...(err.line === undefined ? {} : { line: err.line }),
        ...(err.field === undefined ? {} : { field: err.field }),
      };
    }
    return { ok: false, config: false, message: err instanceof Error ? err.message : String(err) };
  }
}

const data = workerData as { marker?: unknown; input?: ReloadInput } | null;
if (!isMainThread && parentPort !== null && data?.marker === MARKER && data.input !== undefined) {
  const port = parentPort;
  // Stay alive until the daemon has the answer and terminates the worker: an exit racing the message
  // must not turn a good reload into "worker exited".
  port.on('message', () => undefined);
  void runInWorker(data.input).then((reply) => port.postMessage(reply));
}
