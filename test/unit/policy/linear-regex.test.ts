import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileLinearRegex, RegexSyntaxError, MAX_REGEX_STATES } from '../../../src/policy/linear-regex.js';
import { prng } from '../../helpers/prng.js';

/**
 * Input characters: ASCII letters and digits, word/space edges, line terminators, and the code units
 * where case folding is subtle (ſ, Kelvin sign, ß, final sigma, dotted/dotless i) plus lone surrogates
 * (the lossless decoding of raw bytes puts U+DC80..U+DCFF into strings).
 */
const INPUT_UNITS = [
  'a',
  'b',
  'A',
  'B',
  'k',
  'K',
  's',
  'S',
  'x',
  '0',
  '7',
  '_',
  ' ',
  '-',
  '.',
  '[',
  ']',
  '\n',
  '\r',
  '\t',
  '\u00a0',
  'é',
  'É',
  'ſ',
  '\u212a',
  'ß',
  'σ',
  'ς',
  'Σ',
  'ı',
  'İ',
  '\u2028',
  '\ud800',
  '\udc80',
  '\udcff',
];

/** Literals a pattern may contain, escaped when they are syntax. */
const PATTERN_LITERALS = [
  'a',
  'b',
  'A',
  'k',
  's',
  'S',
  'x',
  '0',
  '_',
  ' ',
  '-',
  '\\.',
  '\\[',
  '\\]',
  'é',
  'É',
  'ſ',
  '\u212a',
  'ß',
  'σ',
  'Σ',
  'ı',
  '\\n',
  '\\t',
  '\\x41',
  '\\u00e9',
  '\\udc80',
  '\\cJ',
  '\\0',
  '\\-',
  '\\/',
  '}',
  ']',
];
const CLASS_ITEMS = [
  'a',
  'b',
  'A',
  'k',
  's',
  '0',
  '_',
  ' ',
  'é',
  'ſ',
  'σ',
  '\\-',
  '\\]',
  '\\\\',
  '\\b',
  '\\x2e',
  '\\udc80',
  'a-z',
  'A-Z',
  '0-9',
  'a-k',
  '\\u00c0-\\u00ff',
  '\\ud800-\\udfff',
  '\\d',
  '\\w',
  '\\s',
  '\\D',
  '\\W',
  '\\S',
];
const QUANTIFIERS = ['*', '+', '?', '{2}', '{0,2}', '{1,3}', '{2,}', '{0}', '{0,1}', '{3}'];

/** A random pattern of the supported subset (always valid JavaScript too). */
function randomPattern(rand: () => number, depth: number, names: { n: number }): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const atom = (): string => {
    const r = rand();
    if (depth <= 0 || r < 0.35) return pick(PATTERN_LITERALS);
    if (r < 0.45) return '.';
    if (r < 0.55) return pick(['\\d', '\\w', '\\s', '\\D', '\\W', '\\S']);
    if (r < 0.7) {
      const items = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => pick(CLASS_ITEMS));
      return `[${rand() < 0.3 ? '^' : ''}${items.join('')}]`;
    }
    const open = pick(['(', '(?:', 'named']);
    const head = open === 'named' ? `(?<g${names.n++}>` : open;
    return `${head}${randomPattern(rand, depth - 1, names)})`;
  };
  const term = (): string => {
    const r = rand();
    if (r < 0.12) return pick(['^', '$', '\\b', '\\B']);
    const a = atom();
    if (rand() < 0.4) return a + pick(QUANTIFIERS) + (rand() < 0.2 ? '?' : '');
    return a;
  };
  const alternative = (): string => Array.from({ length: Math.floor(rand() * 4) }, term).join('');
  const alts = Array.from({ length: rand() < 0.25 ? 2 + Math.floor(rand() * 2) : 1 }, alternative);
  return alts.join('|');
}

function randomInput(rand: () => number): string {
  const len = Math.floor(rand() * 10);
  let s = '';
  for (let i = 0; i < len; i++) s += INPUT_UNITS[Math.floor(rand() * INPUT_UNITS.length)];
  return s;
}

test('differential: random patterns of the subset agree with RegExp (with and without i) on random inputs', () => {
  const rand = prng(0x5eed_0011);
  let compared = 0;
  let matched = 0;
  for (let p = 0; p < 3000; p++) {
    const source = randomPattern(rand, 3, { n: 0 });
    for (const ignoreCase of [false, true]) {
      const native = new RegExp(source, ignoreCase ? 'i' : '');
      const ours = compileLinearRegex(source, { ignoreCase });
      for (let k = 0; k < 12; k++) {
        const input = randomInput(rand);
        const expected = native.test(input);
        assert.equal(
          ours.test(input),
          expected,
          `/${source}/${ignoreCase ? 'i' : ''} on ${JSON.stringify(input)}: RegExp says ${expected}`,
        );
        compared++;
        if (expected) matched++;
      }
    }
  }
  // Both outcomes are well represented (a generator producing only trivial patterns would not be).
  assert.ok(matched > compared * 0.2 && matched < compared * 0.8, `${matched} of ${compared} matched`);
});

test('differential: random strings of regex syntax are either refused or agree with RegExp', () => {
  const rand = prng(0x5eed_0012);
  const alphabet = [
    'a',
    'b',
    '(',
    ')',
    '[',
    ']',
    '{',
    '}',
    '1',
    '2',
    ',',
    '*',
    '+',
    '?',
    '|',
    '^',
    '$',
    '.',
    '-',
    '\\',
    'd',
    'b',
    'B',
    'c',
    'k',
    'x',
    'u',
    '?:',
    '?<',
    '?=',
    '<',
    '>',
  ];
  let accepted = 0;
  for (let p = 0; p < 20000; p++) {
    let source = '';
    const len = 1 + Math.floor(rand() * 8);
    for (let i = 0; i < len; i++) source += alphabet[Math.floor(rand() * alphabet.length)];
    let ours;
    try {
      ours = compileLinearRegex(source, { ignoreCase: true });
    } catch (err) {
      assert.ok(err instanceof RegexSyntaxError, `${source}: ${String(err)}`);
      continue;
    }
    // Accepted here: RegExp must accept it too, and both must agree.
    const native = new RegExp(source, 'i');
    accepted++;
    for (let k = 0; k < 6; k++) {
      const input = randomInput(rand) + ['a', 'b{1}', '(', 'xb', ''][k % 5];
      assert.equal(ours.test(input), native.test(input), `/${source}/i on ${JSON.stringify(input)}`);
    }
  }
  assert.ok(accepted > 1000, `only ${accepted} accepted`);
});

test('class escapes, dot and case folding agree with RegExp on every UTF-16 code unit', () => {
  for (const source of [
    '\\d',
    '\\w',
    '\\s',
    '\\D',
    '\\W',
    '\\S',
    '.',
    '[a-z]',
    '[^a-z]',
    'k',
    'ß',
    'σ',
    '\\u00e9',
  ]) {
    for (const flags of ['', 'i']) {
      const native = new RegExp(`^${source}$`, flags);
      const ours = compileLinearRegex(`^${source}$`, { ignoreCase: flags === 'i' });
      for (let c = 0; c <= 0xffff; c++) {
        const s = String.fromCharCode(c);
        if (ours.test(s) !== native.test(s)) {
          assert.fail(
            `/^${source}$/${flags} on U+${c.toString(16).padStart(4, '0')}: RegExp says ${native.test(s)}`,
          );
        }
      }
    }
  }
});

/**
 * The classic catastrophic-backtracking patterns on 255-unit inputs built to defeat them (a HELO is at
 * most 255 bytes in practice). V8 needs exponential (or degree-20 polynomial) time here; the answers
 * are known by construction.
 */
const EVIL: Array<[string, string, boolean]> = [
  ['^(a+)+$', 'a'.repeat(254) + '!', false],
  ['^(a+)+$', 'a'.repeat(255), true],
  ['(a|aa)+$', 'a'.repeat(254) + '!', false],
  ['(a|aa)+$', '!' + 'a'.repeat(254), true],
  ['(.*a){20}', 'a'.repeat(19) + 'b'.repeat(236), false],
  ['(.*a){20}', 'b'.repeat(235) + 'a'.repeat(20), true],
  ['^(\\w+\\s?)*$', 'a'.repeat(254) + '!', false],
  ['^(\\w+\\s?)*$', 'ab '.repeat(85), true],
];

for (const [source, input, expected] of EVIL) {
  test(`linear time: /${source}/i on ${input.length} adversarial units is ${expected}, within 2 visits per state per unit`, () => {
    const re = compileLinearRegex(source, { ignoreCase: true });
    assert.equal(re.test(input), expected);
    // The bound the simulation guarantees: per position, each state is closed over at most once and
    // tested at most once.
    const bound = 2 * re.size * (input.length + 1);
    assert.ok(re.steps > 0 && re.steps <= bound, `${re.steps} steps for ${re.size} states (bound ${bound})`);
    // And the cost grows linearly: twice the input, at most about twice the steps.
    const doubled = input + input.slice(0, input.length);
    re.test(doubled);
    assert.ok(re.steps <= 2 * re.size * (doubled.length + 1));
  });
}

test('steps are linear in the input for a fixed pattern (no hidden per-position blow-up)', () => {
  const re = compileLinearRegex('^(a|aa|a?a?)+$', { ignoreCase: true });
  const per: number[] = [];
  for (const n of [100, 200, 400, 800]) {
    assert.equal(re.test('a'.repeat(n) + 'b'), false);
    per.push(re.steps / (n + 1));
  }
  const [first] = per as [number];
  for (const p of per) assert.ok(p <= first * 1.1 + 1, `steps per unit ${per.join(', ')}`);
});

const REFUSED: Array<[string, RegExp]> = [
  ['(a)\\1', /backreference \\1 is not supported/],
  ['(?<n>a)\\k<n>', /backreference \\k<name> is not supported/],
  ['a(?=b)', /lookahead \(\?=\.\.\.\) is not supported/],
  ['a(?!b)', /lookahead \(\?!\.\.\.\) is not supported/],
  ['(?<=a)b', /lookbehind \(\?<=\.\.\.\) is not supported/],
  ['(?<!a)b', /lookbehind \(\?<!\.\.\.\) is not supported/],
  ['(?i:a)', /group \(\?i\.\.\.\) is not supported/],
  ['\\p{L}', /property escapes are not supported/],
  ['\\07', /octal escapes are not supported/],
  ['[\\1]', /octal escapes are not supported/],
  ['\\q', /unknown escape \\q/],
  ['a{1001}', /pattern too large/],
  ['((a{13}){13}){13}', /pattern too large/],
  ['(((((a{1,1000}){1,1000}){1,1000}){1,1000}){1,1000})', /pattern too large/],
  ['x{99999999999999999999}', /pattern too large/],
  ['(', /unterminated group/],
  ['a)', /unmatched "\)"/],
  ['[a', /unterminated character class/],
  ['[z-a]', /range out of order/],
  ['a{3,2}', /numbers out of order/],
  ['*a', /nothing to repeat/],
  ['a**', /nothing to repeat/],
  ['^*', /nothing to repeat/],
  ['\\', /\\ at end of pattern/],
  ['\\x4', /\\x must be followed by 2 hex digits/],
  ['(?<a>x)(?<a>y)', /duplicate capture group name/],
];

for (const [source, message] of REFUSED) {
  test(`refused at compile time: ${source}`, () => {
    assert.throws(
      () => compileLinearRegex(source),
      (err: unknown) => err instanceof RegexSyntaxError && message.test(err.message),
    );
  });
}

test('the state cap is the documented constant, and empty loops compile to nothing', () => {
  assert.equal(MAX_REGEX_STATES, 1000);
  assert.ok(compileLinearRegex('a{998}').size <= MAX_REGEX_STATES);
  // An empty body repeated a huge number of times costs nothing (and takes no time to build).
  const re = compileLinearRegex('(?:){1000000000}x');
  assert.equal(re.test('x'), true);
  assert.ok(re.size <= 3);
});
