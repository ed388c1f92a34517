/**
 * Load thread of the log-stall extra (log-stall.ts): `connections` MilterClient sessions against the real
 * daemon, each sending messages until the orchestrator says stop, recording the EOM latency. The
 * daemon's default filter answers EOM with one X-Milterd header and continue; anything else, and any
 * timeout, is an error. Runs in a worker thread so the /healthz probe in the orchestrator is not delayed
 * by it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MilterClient } from '../../src/client/index.js';
import { Histogram, type HistogramData } from './histogram.js';

/** workerData of this thread. */
export interface StallLoadConfig {
  spec: string;
  connections: number;
  messagesPerConnection: number;
  timeoutMs: number;
}

/** What the thread posts when stopped. */
export interface StallLoadResult {
  messages: number;
  errors: number;
  errorSamples: string[];
  eom: HistogramData;
}

async function main(): Promise<void> {
  const port = parentPort;
  if (port === null) throw new Error('log-stall-load.ts must run in a worker thread');
  const config = workerData as StallLoadConfig;
  const eom = new Histogram();
  let messages = 0;
  let errors = 0;
  const errorSamples: string[] = [];
  let stopping = false;
  const session = async (): Promise<void> => {
    const client = await MilterClient.connect(config.spec, { timeoutMs: config.timeoutMs });
    try {
      await client.connect({
        hostname: 'client.example.org',
        family: 'inet',
        port: 40000,
        address: '192.0.2.9',
      });
      await client.helo('client.example.org');
      for (let i = 0; i < config.messagesPerConnection && !stopping; i++) {
        client.macro('envfrom', { i: `LS${messages}` });
        await client.envfrom('<sender@example.org>');
        await client.envrcpt('<rcpt@example.net>');
        await client.header('Subject', 'log stall');
        await client.eoh();
        await client.body(Buffer.from('hello\r\n'));
        const t0 = performance.now();
        const r = await client.eom();
        eom.record((performance.now() - t0) * 1e6);
        const header = r.modifications.length === 1 && r.modifications[0]?.kind === 'addHeader';
        if (r.reply.kind !== 'continue' || !header)
          throw new Error(`EOM answered ${JSON.stringify(r.reply)}`);
        messages++;
      }
      await client.quit();
    } finally {
      client.close();
    }
  };
  const loop = async (): Promise<void> => {
    while (!stopping) {
      try {
        await session();
      } catch (err) {
        if (stopping) return;
        errors++;
        if (errorSamples.length < 10) errorSamples.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  const loops = Array.from({ length: config.connections }, () => loop());
  port.on('message', (msg: { type: 'stop' }) => {
    if (msg.type !== 'stop') return;
    stopping = true;
    void Promise.all(loops).then(() => {
      const result: StallLoadResult = { messages, errors, errorSamples, eom: eom.toData() };
      port.postMessage(result);
      port.close();
    });
  });
}

main().catch((err: unknown) => {
  process.stderr.write(
    `log-stall load: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
