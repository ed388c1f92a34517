/**
 * The error catalogue (src/errors.ts): every code is thrown somewhere, each by exactly one class (its
 * family's), and every parser a package entry point exports refuses bad input with a MilterError of the
 * documented class and code, never a plain Error or TypeError.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  MilterConfigError,
  MilterConnectionError,
  MilterError,
  MilterFilterError,
  MilterProtocolError,
  MilterUsageError,
  parseSocketSpec,
} from '../../../src/index.js';
import { MilterClient } from '../../../src/client/index.js';
import {
  compileConditions,
  compileLinearRegex,
  loadPolicyFile,
  NetworkSet,
  parseCidr,
  parseDuration,
  parsePolicy,
  parseSize,
  RegexSyntaxError,
} from '../../../src/policy/index.js';
import {
  decodeCommand,
  decodeResponse,
  encodeCommand,
  encodeResponse,
  FrameDecoder,
  type MilterCommand,
  type MilterResponse,
} from '../../../src/protocol/index.js';
import { fakeTransaction } from '../../../src/testing/index.js';

// Tests run from dist/test/unit/errors: the repository root is four levels up.
const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

type ErrorClass = abstract new (...args: never[]) => MilterError;

/** Assert that `fn` throws (or rejects with) an instance of `cls` with `code`. */
async function refuses(fn: () => unknown, cls: ErrorClass, code: string): Promise<void> {
  let thrown: unknown;
  try {
    await fn();
  } catch (err) {
    thrown = err;
  }
  assert.ok(thrown instanceof MilterError, `a MilterError expected, got ${String(thrown)}`);
  assert.ok(thrown instanceof cls, `${cls.name} expected, got ${thrown.name}: ${thrown.message}`);
  assert.equal(thrown.code, code, thrown.message);
}

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

test('every code in the catalogue is thrown, and each by one class only: its family', async () => {
  const catalogue = await readFile(path.join(ROOT, 'src/errors.ts'), 'utf8');
  // The family types name their class: "codes of {@link MilterXError}", then the codes.
  const family = new Map<string, string>();
  for (const m of catalogue.matchAll(
    /codes of \{@link (Milter\w+Error)\}\)\.? \*\/\nexport type \w+ =([^;]+);/g,
  )) {
    for (const c of (m[2] as string).matchAll(/'(ERR_MILTER_\w+)'/g))
      family.set(c[1] as string, m[1] as string);
  }
  assert.ok(family.size >= 20, `families read from errors.ts: ${family.size}`);
  const thrownBy = new Map<string, Set<string>>();
  for (const file of await sources(path.join(ROOT, 'src'))) {
    if (file.endsWith(`${path.sep}errors.ts`)) continue;
    const text = await readFile(file, 'utf8');
    // `new MilterXError('ERR_…'`, and MilterConfigError's `{ code: 'ERR_…' }` option.
    for (const m of text.matchAll(/new (Milter\w*Error)\(\s*'(ERR_MILTER_\w+)'/g)) {
      thrownBy.set(m[2] as string, (thrownBy.get(m[2] as string) ?? new Set()).add(m[1] as string));
    }
    for (const m of text.matchAll(/code: '(ERR_MILTER_\w+)'/g)) {
      if (family.get(m[1] as string) === 'MilterConfigError') {
        thrownBy.set(m[1] as string, (thrownBy.get(m[1] as string) ?? new Set()).add('MilterConfigError'));
      }
    }
    // MilterConfigError's default code, and the hook failures chosen by a variable.
    if (/new MilterConfigError\(/.test(text)) {
      thrownBy.set(
        'ERR_MILTER_CONFIG',
        (thrownBy.get('ERR_MILTER_CONFIG') ?? new Set()).add('MilterConfigError'),
      );
    }
  }
  for (const code of ['ERR_MILTER_HOOK_FAILED', 'ERR_MILTER_HOOK_TIMEOUT']) {
    // policy/chain.ts: `new MilterFilterError(code, …)` with code one of the two.
    const chain = await readFile(path.join(ROOT, 'src/policy/chain.ts'), 'utf8');
    assert.match(chain, /new MilterFilterError\(code, /);
    assert.match(chain, new RegExp(`'${code}'`));
    thrownBy.set(code, (thrownBy.get(code) ?? new Set()).add('MilterFilterError'));
  }
  for (const [code, cls] of family) {
    assert.deepEqual([...(thrownBy.get(code) ?? [])], [cls], `${code}: thrown by ${cls} only`);
  }
  for (const code of thrownBy.keys()) assert.ok(family.has(code), `${code} thrown but not in the catalogue`);
});

test('MilterError is never thrown itself: its constructor is for the families', () => {
  for (const cls of [MilterProtocolError, MilterFilterError, MilterUsageError, MilterConnectionError]) {
    assert.equal(Object.getPrototypeOf(cls), MilterError);
  }
  assert.equal(Object.getPrototypeOf(MilterConfigError), MilterError);
});

test('protocol decoders: MilterProtocolError with the frame or payload code', async () => {
  await refuses(
    () => decodeCommand({ command: 0x5a, payload: Buffer.alloc(0) }),
    MilterProtocolError,
    'ERR_MILTER_UNKNOWN_COMMAND',
  );
  await refuses(
    () => decodeCommand({ command: 'H'.charCodeAt(0), payload: Buffer.from('X') }),
    MilterProtocolError,
    'ERR_MILTER_MALFORMED_PAYLOAD',
  );
  await refuses(
    () => decodeResponse({ command: 0x5a, payload: Buffer.alloc(0) }),
    MilterProtocolError,
    'ERR_MILTER_UNKNOWN_RESPONSE',
  );
  const empty = new FrameDecoder();
  empty.push(Buffer.from([0, 0, 0, 0]));
  await refuses(() => empty.next(), MilterProtocolError, 'ERR_MILTER_FRAME_EMPTY');
  const large = new FrameDecoder();
  large.push(Buffer.from([0, 1, 0, 1, 0x42]));
  await refuses(() => large.next(), MilterProtocolError, 'ERR_MILTER_FRAME_TOO_LARGE');
});

test('protocol encoders: a value the wire cannot carry is MilterUsageError ERR_MILTER_INVALID_ARGUMENT', async () => {
  await refuses(
    () => encodeCommand({ kind: 'helo', hostname: 'a\0b' }),
    MilterUsageError,
    'ERR_MILTER_INVALID_ARGUMENT',
  );
  await refuses(
    () => encodeResponse({ kind: 'addHeader', name: 'X', value: 'a\0b' }),
    MilterUsageError,
    'ERR_MILTER_INVALID_ARGUMENT',
  );
  // The switches end in a never check; a JavaScript caller's unknown kind is refused, not sent empty.
  await refuses(
    () => encodeResponse({ kind: 'bogus' } as unknown as MilterResponse),
    MilterUsageError,
    'ERR_MILTER_INVALID_ARGUMENT',
  );
  await refuses(
    () => encodeCommand({ kind: 'bogus' } as unknown as MilterCommand),
    MilterUsageError,
    'ERR_MILTER_INVALID_ARGUMENT',
  );
});

test('parseSocketSpec: MilterConfigError ERR_MILTER_LISTEN_SPEC', async () => {
  await refuses(() => parseSocketSpec('tcp:25'), MilterConfigError, 'ERR_MILTER_LISTEN_SPEC');
  await refuses(() => parseSocketSpec('inet:99999@127.0.0.1'), MilterConfigError, 'ERR_MILTER_LISTEN_SPEC');
  await refuses(() => MilterClient.connect('nonsense'), MilterConfigError, 'ERR_MILTER_LISTEN_SPEC');
});

test('value parsers (durations, sizes, CIDR blocks): MilterConfigError ERR_MILTER_CONFIG', async () => {
  await refuses(() => parseDuration('10 parsecs'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parseDuration(-1), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parseSize('lots'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parseSize(1.5), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parseCidr('192.0.2.0/33'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parseCidr('example.org'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => new NetworkSet(['10.0.0.0/8', 'nope']), MilterConfigError, 'ERR_MILTER_CONFIG');
});

test('policy parsers: MilterConfigError ERR_MILTER_CONFIG (a regex the matcher refuses: RegexSyntaxError, one of them)', async () => {
  await refuses(() => parsePolicy('version: 1\nrules: 3\n'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => parsePolicy('version: [\n'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => compileLinearRegex('(a)\\1'), RegexSyntaxError, 'ERR_MILTER_CONFIG');
  await refuses(() => compileLinearRegex('(a)\\1'), MilterConfigError, 'ERR_MILTER_CONFIG');
  await refuses(() => compileConditions({ client: ['300.0.0.0/8'] }), MilterConfigError, 'ERR_MILTER_CONFIG');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'milterd-errors-'));
  try {
    await refuses(
      () => loadPolicyFile(path.join(dir, 'missing.yaml')),
      MilterConfigError,
      'ERR_MILTER_CONFIG',
    );
    await writeFile(path.join(dir, 'bad.yaml'), 'version: 1\nrules:\n  - max-recipients: lots\n');
    await refuses(() => loadPolicyFile(path.join(dir, 'bad.yaml')), MilterConfigError, 'ERR_MILTER_CONFIG');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the transaction API refuses bad values with MilterUsageError ERR_MILTER_INVALID_ARGUMENT', async () => {
  const t = fakeTransaction().transaction;
  await refuses(() => t.headers.add('Bad Name', 'x'), MilterUsageError, 'ERR_MILTER_INVALID_ARGUMENT');
  await refuses(() => t.headers.delete('X', 0), MilterUsageError, 'ERR_MILTER_INVALID_ARGUMENT');
});
