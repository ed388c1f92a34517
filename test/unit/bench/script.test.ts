/**
 * The benchmark's conversation (bench/loadgen/script.ts, played by the lean driver) against the real
 * Postfix 3.7 and Sendmail 8.17 captures in fixtures/captures: the same packets (command bytes, MACRO
 * stage letters and macro names, in order) in the same writes, for one whole connection. Values differ.
 *
 * Write boundaries: the `.hex` log has no write boundaries, but it stamps every packet with the time of
 * the proxy's read that delivered it, so packets with the same stamp (and no reply between them) arrived
 * in one read. For Postfix that is exactly its rule (milter8.c writes into a buffered VSTREAM and only
 * flushes when it reads a reply or closes): every packet that needs no reply rides with the next one.
 * Sendmail writes one packet per writev(); its capture shows each packet in a read of its own (with
 * Nagle's ~40 ms between a MACRO and its command).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { capturesDir } from '../../helpers/captures.js';
import { encodeResponse } from '../../../src/protocol/encode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import {
  MILTER_MDS_1M,
  SMFIF_ADDHDRS,
  SMFIP_NOHDRS,
  SMFIP_NOMAIL,
  SMFIP_NR_BODY,
  SMFIP_NR_HDR,
  SMFIP_SKIP,
} from '../../../src/protocol/constants.js';
import {
  buildPlan,
  connectionWrites,
  OPTNEG_BYTES,
  type MessageShape,
  type MtaName,
} from '../../../bench/loadgen/script.js';
import { createLeanDriver } from '../../../bench/loadgen/lean-driver.js';

interface CapturedPacket {
  time: string;
  dir: '>' | '<';
  bytes: Buffer;
}

function readHex(name: string): CapturedPacket[] {
  const text = readFileSync(join(capturesDir(), `${name}.hex`), 'latin1');
  const out: CapturedPacket[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const [time, dir, , , , hex] = line.split(' ');
    assert.ok(dir === '>' || dir === '<', `bad line ${line}`);
    out.push({ time: time!, dir, bytes: Buffer.from(hex ?? '', 'hex') });
  }
  return out;
}

/** A packet as compared: the command letter; for MACRO also the stage letter and the macro names. */
function describe(cmdAndPayload: Buffer): string {
  const cmd = String.fromCharCode(cmdAndPayload[0]!);
  if (cmd !== 'D') return cmd;
  const stage = String.fromCharCode(cmdAndPayload[1]!);
  const strings = cmdAndPayload.subarray(2).toString('latin1').split('\0').slice(0, -1);
  const names = strings.filter((_, i) => i % 2 === 0);
  return `D${stage}[${names.join(' ')}]`;
}

/** Split one write into its packets. */
function framesOf(write: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < write.length;) {
    const len = write.readUInt32BE(o);
    out.push(write.subarray(o + 4, o + 4 + len));
    o += 4 + len;
  }
  assert.equal(
    out.reduce((n, f) => n + 4 + f.length, 0),
    write.length,
    'write ends inside a packet',
  );
  return out;
}

/** The capture's MTA → milter packets, grouped by read (same stamp, no reply in between). */
function capturedWrites(packets: readonly CapturedPacket[]): string[][] {
  const groups: string[][] = [];
  let last: CapturedPacket | undefined;
  for (const p of packets) {
    if (p.dir === '>') {
      if (last?.dir === '>' && last.time === p.time) groups[groups.length - 1]!.push(describe(p.bytes));
      else groups.push([describe(p.bytes)]);
    }
    last = p;
  }
  return groups;
}

function generatedWrites(writes: readonly Buffer[]): string[][] {
  return writes.map((w) => framesOf(w).map(describe));
}

/** What the filter in the capture negotiated (its OPTNEG reply's protocol word). */
function negotiated(packets: readonly CapturedPacket[]): number {
  const reply = packets.find((p) => p.dir === '<');
  assert.equal(reply?.bytes[0], 'O'.charCodeAt(0));
  return reply!.bytes.readUInt32BE(9);
}

/** The message shape of the capture's first message. */
function shapeOf(packets: readonly CapturedPacket[], messages: number): MessageShape {
  const mta = packets.filter((p) => p.dir === '>');
  const count = (c: string): number => mta.filter((p) => p.bytes[0] === c.charCodeAt(0)).length / messages;
  const body = mta
    .filter((p) => p.bytes[0] === 'B'.charCodeAt(0))
    .reduce((n, p) => n + p.bytes.length - 1, 0);
  return { recipients: count('R'), headers: count('L'), bodySize: body / messages };
}

const CASES: Array<{ mta: MtaName; capture: string; messages: number }> = [
  { mta: 'postfix', capture: 'postfix/plain/conn-0001', messages: 1 },
  { mta: 'postfix', capture: 'postfix/multi_message/conn-0028', messages: 2 },
  { mta: 'sendmail', capture: 'sendmail/plain/conn-0001', messages: 1 },
  { mta: 'sendmail', capture: 'sendmail/multi_message/conn-0028', messages: 2 },
];

for (const { mta, capture, messages } of CASES) {
  test(`--mta ${mta}: one connection with ${messages} message(s) is packet for packet ${capture}`, () => {
    const packets = readHex(capture);
    const expected = capturedWrites(packets);
    const plan = buildPlan(shapeOf(packets, messages), negotiated(packets), false, mta);
    const actual = generatedWrites(connectionWrites(plan, messages));
    assert.deepEqual(actual, expected);
    // The first write is the offer, byte for byte.
    assert.deepEqual(
      connectionWrites(plan, messages)[0],
      Buffer.concat([Buffer.from([0, 0, 0, 13]), packets[0]!.bytes]),
    );
  });
}

test('postfix/plain: a MACRO with macro i precedes every HEADER and every BODY chunk', () => {
  const plan = buildPlan({ recipients: 2, headers: 10, bodySize: 200_000 }, SMFIP_SKIP, false, 'postfix');
  const writes = generatedWrites(connectionWrites(plan, 1)).flat();
  const headers = writes.flatMap((p, i) => (p === 'L' ? [writes[i - 1]] : []));
  const bodies = writes.flatMap((p, i) => (p === 'B' ? [writes[i - 1]] : []));
  assert.deepEqual(headers, new Array(10).fill('DL[i]'));
  assert.deepEqual(bodies, new Array(4).fill('DB[i]'));
});

test('postfix: every write ends with a packet that is answered, or with QUIT (capture and generator)', () => {
  const awaited = new Set(['O', 'C', 'H', 'M', 'R', 'T', 'L', 'N', 'B', 'E']);
  for (const name of ['postfix/plain/conn-0001', 'postfix/multi_message/conn-0028']) {
    for (const w of capturedWrites(readHex(name)))
      assert.ok(awaited.has(w.at(-1)!) || w.at(-1) === 'Q', name);
  }
  const plan = buildPlan({ recipients: 2, headers: 10, bodySize: 4096 }, SMFIP_SKIP, false, 'postfix');
  const writes = generatedWrites(connectionWrites(plan, 3));
  for (const w of writes) assert.ok(awaited.has(w.at(-1)!) || w.at(-1) === 'Q', w.join(' '));
  // Messages after the first begin with the previous message's ABORT, in the MAIL write.
  assert.deepEqual(
    plan.nextMessage[0]!.writes.map((b) => framesOf(b).map(describe)),
    [['A', 'DM[{mail_addr} {mail_host} {mail_mailer}]', 'M']],
  );
});

test('NR events are not awaited: Postfix puts them in the next write, Sendmail in writes of their own', () => {
  const shape: MessageShape = { recipients: 1, headers: 3, bodySize: 10 };
  const pf = buildPlan(shape, SMFIP_NR_HDR | SMFIP_NR_BODY, false, 'postfix');
  // MAIL, RCPT, DATA, EOH (with the 3 headers in front), EOM (with the body in front).
  assert.deepEqual(
    pf.firstMessage.map((s) => s.writes.map((w) => framesOf(w).map(describe).join(' '))),
    [
      ['DM[{mail_addr} {mail_host} {mail_mailer}] M'],
      ['DR[{rcpt_addr} {rcpt_host} {rcpt_mailer}] R'],
      ['DT[i] T'],
      ['DL[i] L DL[i] L DL[i] L DN[i] N'],
      ['DB[i] B DE[i] E'],
    ],
  );
  const sm = buildPlan(shape, SMFIP_NR_HDR, false, 'sendmail');
  const eoh = sm.firstMessage.find((s) => s.writes.some((w) => describe(framesOf(w)[0]!) === 'N'))!;
  assert.deepEqual(
    eoh.writes.map((w) => framesOf(w).map(describe)),
    [['L'], ['L'], ['L'], ['N']],
  );
});

test('an event negotiated away is not sent; an envelope event still sends its macros, like both MTAs', () => {
  const shape: MessageShape = { recipients: 1, headers: 2, bodySize: 10 };
  for (const mta of ['postfix', 'sendmail'] as const) {
    const plan = buildPlan(shape, SMFIP_NOMAIL | SMFIP_NOHDRS, false, mta);
    const packets = generatedWrites(connectionWrites(plan, 1)).flat();
    assert.ok(!packets.includes('M'), `${mta}: MAIL sent`);
    assert.ok(!packets.includes('L'), `${mta}: HEADER sent`);
    assert.ok(!packets.includes('DL[i]'), `${mta}: header macros sent`);
    assert.ok(
      packets.some((p) => p.startsWith('DM[')),
      `${mta}: MAIL macros missing`,
    );
  }
  // Postfix: the MAIL macros ride with RCPT, the first event that is answered.
  const pf = buildPlan(shape, SMFIP_NOMAIL, false, 'postfix');
  assert.deepEqual(framesOf(pf.firstMessage[0]!.writes[0]!).map(describe), [
    'DM[{mail_addr} {mail_host} {mail_mailer}]',
    'DR[{rcpt_addr} {rcpt_host} {rcpt_mailer}]',
    'R',
  ]);
});

test('an idle connection ends like the MTA: Postfix ABORT + QUIT in one write, Sendmail QUIT', () => {
  const shape: MessageShape = { recipients: 1, headers: 1, bodySize: 1 };
  const pf = buildPlan(shape, SMFIP_SKIP, false, 'postfix');
  const sm = buildPlan(shape, SMFIP_SKIP, false, 'sendmail');
  // postfix/helo_quit and sendmail/helo_quit: … HELO, then the end.
  assert.deepEqual(
    generatedWrites(pf.endWithoutMessage),
    capturedWrites(readHex('postfix/helo_quit/conn-0033')).slice(-1),
  );
  assert.deepEqual(
    generatedWrites(sm.endWithoutMessage),
    capturedWrites(readHex('sendmail/helo_quit/conn-0033')).slice(-1),
  );
  assert.deepEqual(connectionWrites(pf, 0)[0], OPTNEG_BYTES);
});

/**
 * A filter on loopback that answers like the bench filter (CONTINUE, at EOM one ADDHEADER X-Bench) and
 * keeps every byte the driver sent, until the driver closes. Only for `protocol` = SKIP | NR_HDR.
 */
async function recordingFilter(protocol: number): Promise<{ spec: string; bytes: Promise<Buffer> }> {
  // Answered commands; HEADER is not, the filter negotiates SMFIP_NR_HDR.
  const answered = new Set(['O', 'C', 'H', 'M', 'R', 'T', 'N', 'B', 'E'].map((c) => c.charCodeAt(0)));
  let resolveBytes: (b: Buffer) => void = () => {};
  const bytes = new Promise<Buffer>((r) => (resolveBytes = r));
  const server = net.createServer((socket) => {
    const chunks: Buffer[] = [];
    const decoder = new FrameDecoder(MILTER_MDS_1M);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      decoder.push(chunk);
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
        if (!answered.has(f.command)) continue;
        if (f.command === 'O'.charCodeAt(0)) {
          socket.write(encodeResponse({ kind: 'optneg', version: 6, actions: SMFIF_ADDHDRS, protocol }));
        } else if (f.command === 'E'.charCodeAt(0)) {
          socket.write(encodeResponse({ kind: 'addHeader', name: 'X-Bench', value: 'milterd-bench' }));
          socket.write(encodeResponse({ kind: 'continue' }));
        } else socket.write(encodeResponse({ kind: 'continue' }));
      }
    });
    socket.on('end', () => {
      socket.end();
      server.close();
      resolveBytes(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return { spec: `inet:${port}@127.0.0.1`, bytes };
}

for (const mta of ['postfix', 'sendmail'] as const) {
  test(
    `--mta ${mta}: the lean driver sends exactly the plan, ABORTs and QUIT included`,
    { timeout: 30_000 },
    async () => {
      const protocol = SMFIP_SKIP | SMFIP_NR_HDR;
      const filter = await recordingFilter(protocol);
      const shape: MessageShape = { recipients: 2, headers: 3, bodySize: 70_000 };
      let limit: () => void = () => {};
      const limited = new Promise<void>((r) => (limit = r));
      const driver = createLeanDriver(
        {
          ...shape,
          spec: filter.spec,
          connections: 1,
          messagesPerConnection: 3,
          maxMessages: 3,
          timeoutMs: 10_000,
          driver: 'lean',
          mta,
          idle: false,
          rampMs: 0,
          workerIndex: 0,
        },
        { onLimit: () => limit(), onHeld: () => {} },
      );
      driver.start();
      let stats;
      let received;
      try {
        await limited;
        received = await filter.bytes;
      } finally {
        stats = await driver.stop();
      }
      assert.equal(stats.messages, 3);
      assert.equal(stats.errors + stats.warmupErrors, 0, stats.errorSamples.join('; '));
      const plan = buildPlan(shape, protocol, false, mta);
      assert.deepEqual(received, Buffer.concat(connectionWrites(plan, 3)));
    },
  );
}
