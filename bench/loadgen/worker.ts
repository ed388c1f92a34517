/**
 * Load generator worker thread: runs one driver over its share of the connections and talks to the
 * orchestrator (bench/run.ts) with `mark` / `stop` messages. Runs in a worker thread of the orchestrator,
 * never in a server's process, so it does not steal the server's event loop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Driver, DriverHooks } from './lean-driver.js';
import type { FromWorker, LoadConfig, ToWorker } from './types.js';

async function main(): Promise<void> {
  const port = parentPort;
  if (port === null) throw new Error('worker.ts must run in a worker thread');
  const config = workerData as LoadConfig;
  const post = (msg: FromWorker): void => port.postMessage(msg);
  let lastHeldPost = 0;
  const hooks: DriverHooks = {
    onLimit: () => post({ type: 'limit' }),
    onHeld: (held, errors) => {
      const now = Date.now();
      if (now - lastHeldPost > 100 || held === config.connections) {
        lastHeldPost = now;
        post({ type: 'held', held, errors });
      }
    },
  };
  let driver: Driver;
  if (config.driver === 'client') {
    const { createClientDriver } = await import('./client-driver.js');
    driver = createClientDriver(config, hooks);
  } else {
    const { createLeanDriver } = await import('./lean-driver.js');
    driver = createLeanDriver(config, hooks);
  }
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'mark') driver.mark();
    else if (msg.type === 'stop') {
      void driver.stop().then((stats) => {
        post({ type: 'result', stats });
        port.close();
      });
    }
  });
  driver.start();
}

main().catch((err: unknown) => {
  parentPort?.postMessage({
    type: 'fatal',
    error: err instanceof Error ? (err.stack ?? err.message) : String(err),
  } satisfies FromWorker);
});
