/**
 * Does the whole-message API keep memory flat? One message per body size goes through a `messageFilter`
 * that rewrites the Subject and replaces the body with an upper-cased stream of itself (the issue 13
 * e2e filter), each size in a fresh server process; the table gives the server's peak RSS (VmHWM). A
 * second filter that reads the body whole (`bodyBuffer()`) shows what growth with the body looks like.
 *
 *   node dist/bench/tools/message-memory.js [--sizes 1,20,100] [--modes stream,buffer]
 *
 * The client keeps no body: it sends one 64 KiB chunk over and over and counts the replaced body.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { MilterClient } from '../../src/client/index.js';
import { messageFilter, type Filter } from '../../src/index.js';
import { createMilterServer } from '../../src/server/server.js';
import { peakRssKiB } from '../lib/proc.js';

type Mode = 'stream' | 'buffer';
const MiB = 1024 * 1024;
const CHUNK = 65535;

function upper(chunk: Buffer): Buffer {
  const out = Buffer.from(chunk);
  for (let i = 0; i < out.length; i++) {
    const b = out[i] as number;
    if (b >= 0x61 && b <= 0x7a) out[i] = b - 0x20;
  }
  return out;
}

async function* upperStream(body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of body) yield upper(chunk);
}

function filterFor(mode: Mode): Filter {
  return messageFilter({
    name: `memory-${mode}`,
    async message(trx) {
      trx.headers.set('Subject', `[big] ${trx.headers.get('Subject') ?? ''}`);
      if (mode === 'stream') trx.replaceBody(upperStream(trx.body()));
      else trx.replaceBody(upper(await trx.bodyBuffer()));
    },
  });
}

/** The server side: a child process, so that its peak RSS is its own. */
async function serve(mode: Mode, socketPath: string): Promise<void> {
  const server = createMilterServer({ filter: filterFor(mode) });
  await server.listen(`unix:${socketPath}`);
  process.send?.('ready');
  process.on('message', (m) => {
    if (m === 'stop') void server.close().then(() => process.exit(0));
  });
}

async function oneMessage(socketPath: string, bodyBytes: number): Promise<number> {
  const client = await MilterClient.connect(`unix:${socketPath}`, { timeoutMs: 600_000 });
  try {
    await client.connect({ hostname: 'client.example', family: 'inet', port: 40000, address: '192.0.2.1' });
    await client.helo('client.example');
    await client.envfrom('<sender@example.org>');
    await client.envrcpt('<rcpt@example.net>');
    await client.data();
    await client.header('Subject', 'memory');
    await client.eoh();
    const line = Buffer.from('The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n');
    const chunk = Buffer.alloc(CHUNK);
    for (let i = 0; i < CHUNK; i += line.length) line.copy(chunk, i);
    for (let sent = 0; sent < bodyBytes; sent += CHUNK) {
      await client.body(chunk.subarray(0, Math.min(CHUNK, bodyBytes - sent)));
    }
    const eom = await client.eom();
    let replaced = 0;
    for (const m of eom.modifications) if (m.kind === 'replaceBody') replaced += m.chunk.length;
    if (eom.reply.kind !== 'continue' && eom.reply.kind !== 'accept') {
      throw new Error(`end of message answered ${eom.reply.kind}`);
    }
    await client.quit();
    return replaced;
  } finally {
    client.close();
  }
}

async function measure(mode: Mode, mib: number): Promise<{ peakMiB: number; replacedMiB: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'milterd-msgmem-'));
  const socketPath = path.join(dir, 'milter.sock');
  const child = fork(fileURLToPath(import.meta.url), ['--serve', mode, socketPath], { stdio: 'inherit' });
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('exit', (code) => reject(new Error(`server exited (${String(code)})`)));
    });
    const replaced = await oneMessage(socketPath, mib * MiB);
    return { peakMiB: peakRssKiB(child.pid ?? 0) / 1024, replacedMiB: replaced / MiB };
  } finally {
    child.send('stop');
    await new Promise((resolve) => child.once('exit', resolve));
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface MessageMemoryRow {
  mode: Mode;
  bodyMiB: number;
  peakRssMiB: number;
  replacedMiB: number;
}

export async function messageMemory(
  sizes: readonly number[],
  modes: readonly Mode[],
): Promise<MessageMemoryRow[]> {
  const rows: MessageMemoryRow[] = [];
  for (const mode of modes) {
    for (const bodyMiB of sizes) {
      const m = await measure(mode, bodyMiB);
      rows.push({ mode, bodyMiB, peakRssMiB: m.peakMiB, replacedMiB: m.replacedMiB });
    }
  }
  return rows;
}

async function main(argv: readonly string[]): Promise<void> {
  if (argv[0] === '--serve') return serve(argv[1] as Mode, argv[2] as string);
  let sizes = [1, 20, 100];
  let modes: Mode[] = ['stream', 'buffer'];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--sizes') sizes = String(argv[++i]).split(',').map(Number);
    else if (argv[i] === '--modes') modes = String(argv[++i]).split(',') as Mode[];
  }
  const rows = await messageMemory(sizes, modes);
  console.log('| filter | body MiB | server peak RSS MiB | replaced body MiB |');
  console.log('|---|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.mode} | ${r.bodyMiB} | ${r.peakRssMiB.toFixed(1)} | ${r.replacedMiB.toFixed(1)} |`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
