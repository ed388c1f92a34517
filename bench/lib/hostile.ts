/**
 * Extras about peers that cost the server more than their share (issue 11, item 3):
 *
 * - `bigframes`: RSS of milterd holding N idle connections that each sent one maximum-size frame (a header,
 *   or a macro packet) and then went quiet: what a connection keeps after a large frame.
 * - `flood`: a healthy session's latency while F peers pipeline header frames without reading replies:
 *   how much of the event loop one connection may take before others are served.
 *
 * Both drive milterd with raw frames from this process (no load generator threads).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { MilterClient } from '../../src/client/client.js';
import { encodeCommand, encodeCommands } from '../../src/protocol/encode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import {
  MILTER_MDS_256K,
  MILTER_MDS_64K,
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
  SMFIP_MDS_1M,
  SMFIP_MDS_256K,
} from '../../src/protocol/constants.js';
import type { MilterCommand } from '../../src/protocol/types.js';
import { startServer, type CandidateDef } from './candidates.js';
import { peakRssKiB, rssKiB } from './proc.js';
import { table } from './stats.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A raw peer: writes frames, counts the replies it reads (or stops reading). */
class RawPeer {
  replies = 0;
  private readonly decoder = new FrameDecoder(1 << 20);
  private wanted = 0;
  private wake: (() => void) | undefined;
  private closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk);
      while (this.decoder.next() !== undefined) this.replies++;
      if (this.replies >= this.wanted) this.wake?.();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  static connect(spec: string): Promise<RawPeer> {
    const at = spec.indexOf('@');
    return new Promise((resolve, reject) => {
      const s = spec.startsWith('unix:')
        ? net.connect({ path: spec.slice(5) })
        : net.connect({ host: spec.slice(at + 1), port: Number(spec.slice(5, at)) });
      s.once('connect', () => resolve(new RawPeer(s)));
      s.once('error', reject);
    });
  }

  /** Wait until `total` replies were read in all; false when the server closed first. */
  async until(total: number): Promise<boolean> {
    this.wanted = total;
    while (this.replies < total && !this.closed) {
      await new Promise<void>((r) => (this.wake = r));
    }
    return this.replies >= total;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const CONNECT: MilterCommand = {
  kind: 'connect',
  hostname: 'client.example',
  family: 'inet',
  port: 4567,
  address: '192.0.2.1',
};
const ENVELOPE: MilterCommand[] = [
  CONNECT,
  { kind: 'mail', sender: '<s@example.org>', args: [] },
  { kind: 'rcpt', recipient: '<r@example.net>', args: [] },
  { kind: 'data' },
];

/** MDS bit that lets a payload of `size` bytes through, or 0 when `floor` already does. */
function mdsFor(size: number, floor: number): number {
  if (size <= floor) return 0;
  return size <= MILTER_MDS_256K ? SMFIP_MDS_256K : SMFIP_MDS_1M;
}

export interface BigFrameResult {
  variant: 'header' | 'macro';
  payloadBytes: number;
  requested: number;
  held: number;
  /** RSS before the connections were opened. */
  baseRssMiB: number;
  /** RSS with every connection idle after its large frame. */
  rssMiB: number;
  peakRssMiB: number;
}

/**
 * Open `n` connections; each negotiates, sends one frame of `payloadBytes` (a header inside a
 * transaction, or a CONNECT macro packet followed by CONNECT), reads its replies and goes idle. Report the
 * server's RSS once all are idle. `floor` is the largest payload the server takes without MDS: above it
 * the peer offers SMFIP_MDS_256K/1M as Sendmail built with _FFR_MDS_NEGOTIATE would.
 */
export async function bigFrameIdle(
  def: CandidateDef,
  n: number,
  variant: 'header' | 'macro',
  payloadBytes: number,
  floor: number,
  logFile: string,
  fdLimit: number,
  log: (s: string) => void,
): Promise<BigFrameResult> {
  const server = await startServer(def, 'tcp', logFile, fdLimit);
  const base = rssKiB(server.pid);
  const optneg = encodeCommand({
    kind: 'optneg',
    version: 6,
    actions: SMFI_CURR_ACTS,
    protocol: SMFI_CURR_PROT | mdsFor(payloadBytes, floor),
  });
  let wire: Buffer;
  let replies: number;
  if (variant === 'header') {
    const name = 'X-Big';
    const value = 'v'.repeat(payloadBytes - name.length - 2); // name NUL value NUL
    wire = encodeCommands([...ENVELOPE, { kind: 'header', name, value }]);
    replies = ENVELOPE.length + 1;
  } else {
    const name = '{big}';
    const value = 'v'.repeat(payloadBytes - 1 - name.length - 2); // stage, name NUL value NUL
    wire = encodeCommands([{ kind: 'macro', stage: 'C', macros: [[name, value]] }, CONNECT]);
    replies = 1;
  }
  const peers: RawPeer[] = [];
  let failed = 0;
  try {
    // Batches: enough in flight to be quick, few enough not to measure a transient of n frames at once.
    for (let i = 0; i < n; i += 50) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(50, n - i) }, async () => {
          const peer = await RawPeer.connect(server.spec);
          peer.socket.write(optneg);
          if (!(await peer.until(1))) return peer;
          peer.socket.write(wire);
          if (!(await peer.until(1 + replies))) failed++;
          return peer;
        }),
      );
      peers.push(...batch);
    }
    await sleep(2000); // settle: let the server collect what it dropped
    const rss = rssKiB(server.pid);
    const peak = peakRssKiB(server.pid);
    const held = peers.filter((p) => !p.socket.destroyed).length;
    if (failed > 0) log(`  ${variant}: ${failed} connections were closed before their reply`);
    return {
      variant,
      payloadBytes,
      requested: n,
      held,
      baseRssMiB: base / 1024,
      rssMiB: rss / 1024,
      peakRssMiB: peak / 1024,
    };
  } finally {
    for (const p of peers) p.destroy();
    await server.stop();
  }
}

export interface FloodResult {
  flooders: number;
  /** Header frames the flooders wrote in all. */
  floodFrames: number;
  messages: number;
  eomP50Ms: number;
  eomP99Ms: number;
  eomMaxMs: number;
  messageP50Ms: number;
  messageP99Ms: number;
  messageMaxMs: number;
  errors: number;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

/**
 * `flooders` peers each open a transaction, then write bursts of `burstFrames` header frames one after
 * the other without ever reading a reply (TCP flow control stops them once the replies fill the buffers),
 * while one healthy session plays messages one at a time. Reports the healthy session's EOM latency and
 * whole-message time over `durationMs` (or `messages` messages, whichever ends first).
 */
export async function floodLatency(
  def: CandidateDef,
  opts: { flooders: number; burstFrames: number; messages: number; durationMs: number },
  logFile: string,
  fdLimit: number,
  log: (s: string) => void,
): Promise<FloodResult> {
  const server = await startServer(def, 'tcp', logFile, fdLimit);
  const optneg = encodeCommand({
    kind: 'optneg',
    version: 6,
    actions: SMFI_CURR_ACTS,
    protocol: SMFI_CURR_PROT,
  });
  const burst = encodeCommands(
    Array.from({ length: opts.burstFrames }, (): MilterCommand => ({
      kind: 'header',
      name: 'X-F',
      value: 'f',
    })),
  );
  const peers: RawPeer[] = [];
  let stop = false;
  let floodFrames = 0;
  try {
    for (let i = 0; i < opts.flooders; i++) {
      const peer = await RawPeer.connect(server.spec);
      peers.push(peer);
      peer.socket.write(optneg);
      await peer.until(1);
      peer.socket.write(encodeCommands(ENVELOPE));
      await peer.until(1 + ENVELOPE.length);
    }
    const client = await MilterClient.connect(server.spec, { timeoutMs: 600_000 });
    try {
      await client.connect({ hostname: 'healthy.example', family: 'inet', port: 1, address: '192.0.2.2' });
      await client.helo('healthy.example');
      // The flood: from now on the flooders never read.
      for (const peer of peers) {
        peer.socket.pause();
        const more = (): void => {
          if (stop || peer.socket.destroyed) return;
          floodFrames += opts.burstFrames;
          peer.socket.write(burst, more);
        };
        more();
      }
      const eom: number[] = [];
      const whole: number[] = [];
      let errors = 0;
      const t0 = performance.now();
      const body = Buffer.alloc(4096, 0x61);
      for (let m = 0; m < opts.messages && performance.now() - t0 < opts.durationMs; m++) {
        const start = performance.now();
        try {
          await client.envfrom('<healthy@example.org>');
          await client.envrcpt('<r@example.net>');
          await client.data();
          for (let h = 0; h < 10; h++) await client.header(`X-H${h}`, 'value');
          await client.eoh();
          await client.body(body);
          const e0 = performance.now();
          await client.eom();
          const e1 = performance.now();
          eom.push(e1 - e0);
          whole.push(e1 - start);
        } catch (err) {
          errors++;
          log(`  flood: healthy message failed: ${err instanceof Error ? err.message : String(err)}`);
          break;
        }
      }
      eom.sort((a, b) => a - b);
      whole.sort((a, b) => a - b);
      return {
        flooders: opts.flooders,
        floodFrames,
        messages: eom.length,
        eomP50Ms: percentile(eom, 50),
        eomP99Ms: percentile(eom, 99),
        eomMaxMs: eom.at(-1) ?? Number.NaN,
        messageP50Ms: percentile(whole, 50),
        messageP99Ms: percentile(whole, 99),
        messageMaxMs: whole.at(-1) ?? Number.NaN,
        errors,
      };
    } finally {
      stop = true;
      client.close();
    }
  } finally {
    stop = true;
    for (const p of peers) p.destroy();
    await server.stop();
  }
}

/** Options of the two extras (`npm run bench -- --help`). */
export interface HostileArgs {
  extras: readonly string[];
  bigFrameConnections: number;
  /** Payload bytes of the large frame; default: the largest a milterd server takes without MDS. */
  bigFrameSize: number | undefined;
  flooders: number;
  floodBurst: number;
  floodMessages: number;
  floodMs: number;
}

/** One measured row per candidate (milterd, and milterd-alt for an A/B run). */
export interface HostileOutput {
  extras: Record<string, unknown>;
  blocks: string[];
  targets: Array<{ target: string; value: string; ok: boolean | undefined }>;
}

const mib = (x: number): string => x.toFixed(1);
const ms = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-');

/** One measurement: its row is kept and logged; a failure is logged and the other rows go on. */
async function addRow<R extends object>(
  rows: Array<R & { candidate: string }>,
  candidate: string,
  log: (s: string) => void,
  run: () => Promise<R>,
): Promise<void> {
  try {
    const r = await run();
    rows.push({ candidate, ...r });
    log(`  ${JSON.stringify(r)}`);
  } catch (err) {
    log(`  FAILED ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Run the `bigframes` and `flood` extras that `a.extras` selects, on every candidate in `defs`. */
export async function hostileExtras(
  defs: readonly CandidateDef[],
  a: HostileArgs,
  logFile: string,
  fdLimit: number,
  log: (s: string) => void,
): Promise<HostileOutput> {
  const out: HostileOutput = { extras: {}, blocks: [], targets: [] };
  if (a.extras.includes('bigframes')) {
    const rows: Array<BigFrameResult & { candidate: string }> = [];
    for (const def of defs) {
      for (const variant of ['header', 'macro'] as const) {
        // milterd's limit without MDS (64 KiB - 1, libmilter's); above it the peers offer MDS.
        const floor = MILTER_MDS_64K;
        const size = a.bigFrameSize ?? floor;
        log(
          `extra: ${def.name}, ${a.bigFrameConnections} idle connections after one ${size}-byte ${variant} frame`,
        );
        await addRow(rows, def.name, log, () =>
          bigFrameIdle(def, a.bigFrameConnections, variant, size, floor, logFile, fdLimit, log),
        );
      }
    }
    out.extras.bigframes = rows;
    out.blocks.push(
      `### idle connections after one maximum-size frame each, tcp\n\n` +
        table(
          [
            'candidate',
            'frame',
            'payload bytes',
            'connections',
            'held',
            'RSS before MiB',
            'RSS idle MiB',
            'peak RSS MiB',
          ],
          rows.map((r) => [
            r.candidate,
            r.variant,
            String(r.payloadBytes),
            String(r.requested),
            String(r.held),
            mib(r.baseRssMiB),
            mib(r.rssMiB),
            mib(r.peakRssMiB),
          ]),
        ),
    );
    for (const r of rows.filter((x) => x.candidate === 'milterd' && x.requested === 1000)) {
      out.targets.push({
        target: `RSS, 1000 idle connections after one max-size ${r.variant} frame ≤ 200 MiB`,
        value: `${mib(r.rssMiB)} MiB`,
        ok: r.rssMiB <= 200 && r.held === r.requested,
      });
    }
  }
  if (a.extras.includes('flood')) {
    const rows: Array<FloodResult & { candidate: string }> = [];
    for (const def of defs) {
      log(
        `extra: ${def.name}, healthy session while ${a.flooders} peers pipeline header frames without reading`,
      );
      await addRow(rows, def.name, log, () =>
        floodLatency(
          def,
          {
            flooders: a.flooders,
            burstFrames: a.floodBurst,
            messages: a.floodMessages,
            durationMs: a.floodMs,
          },
          logFile,
          fdLimit,
          log,
        ),
      );
    }
    out.extras.flood = rows;
    out.blocks.push(
      `### healthy session while ${a.flooders} peers pipeline without reading (bursts of ${a.floodBurst} header frames), tcp\n\n` +
        table(
          [
            'candidate',
            'messages',
            'flood frames sent',
            'EOM p50 ms',
            'EOM p99 ms',
            'EOM max ms',
            'message p50 ms',
            'message p99 ms',
            'message max ms',
            'errors',
          ],
          rows.map((r) => [
            r.candidate,
            String(r.messages),
            String(r.floodFrames),
            ms(r.eomP50Ms),
            ms(r.eomP99Ms),
            ms(r.eomMaxMs),
            ms(r.messageP50Ms),
            ms(r.messageP99Ms),
            ms(r.messageMaxMs),
            String(r.errors),
          ]),
        ),
    );
  }
  return out;
}
