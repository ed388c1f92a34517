/**
 * `milterd test` delivers a message file byte for byte (issue 11 item 1): header values are exactly the
 * bytes after the colon with SMFIP_HDR_LEADSPC, without it minus the one space an MTA removes, 8-bit bytes
 * unchanged, folded lines joined with LF as Postfix does; the body with CRLF line ends.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runTest } from '../../src/cli/test-command.js';
import { wireBytes, type Filter } from '../../src/index.js';
import { startServer } from '../helpers/server.js';

const FILE = Buffer.from(
  'Subject:x\r\n' +
    'X-Two:  two\r\n' +
    'X-Tab:\tt\r\n' +
    'X-Latin1: caf\xe9\r\n' +
    'X-Fold: a\r\n\tb\xff\r\n' +
    'From: <j\xf6rg@example.de>\n' +
    'To: <b@example.net>\r\n' +
    '\r\n' +
    'body \xe9\r\n' +
    'line 2\n',
  'latin1',
);

const latin1 = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

for (const leadingSpace of [true, false]) {
  test(`milterd test sends header bytes exactly (${leadingSpace ? 'with' : 'without'} HDR_LEADSPC)`, async (t) => {
    const headers: Array<[string, string]> = [];
    const body: Buffer[] = [];
    let sender = '';
    const recorder: Filter = {
      headerLeadingSpace: leadingSpace,
      envfrom: (_ctx, from) => void (sender = wireBytes(from).toString('hex')),
      header: (_ctx, name, value) => void headers.push([name, wireBytes(value).toString('hex')]),
      body: (_ctx, chunk) => void body.push(Buffer.from(chunk)),
    };
    const { address } = await startServer(t, { filter: recorder });
    const dir = await mkdtemp(path.join(tmpdir(), 'milterd-bytes-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'latin1.eml');
    await writeFile(file, FILE);
    let report = '';
    const code = await runTest(
      file,
      {
        milter: `inet:${address.port}@127.0.0.1`,
        connectAddr: '127.0.0.1',
        connectPort: 54321,
        helo: 'localhost',
        timeout: 5000,
      },
      (text) => void (report += text),
    );
    assert.equal(code, 0, report);
    const space = leadingSpace ? ' ' : '';
    assert.deepEqual(headers, [
      ['Subject', latin1('x')],
      ['X-Two', latin1(`${space} two`)],
      ['X-Tab', latin1('\tt')],
      ['X-Latin1', latin1(`${space}caf\xe9`)],
      ['X-Fold', latin1(`${space}a\n\tb\xff`)],
      ['From', latin1(`${space}<j\xf6rg@example.de>`)],
      ['To', latin1(`${space}<b@example.net>`)],
    ]);
    // The envelope sender taken from From: keeps its 8-bit byte too.
    assert.equal(sender, latin1('<j\xf6rg@example.de>'));
    assert.deepEqual(Buffer.concat(body), Buffer.from('body \xe9\r\nline 2\r\n', 'latin1'));
  });
}
