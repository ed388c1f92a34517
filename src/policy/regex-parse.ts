/**
 * Parser of the regular-expression subset that {@link compileLinearRegex} (linear-regex.ts) matches in
 * linear time: JavaScript RegExp syntax without the `u`/`v` flags, minus every construct that needs
 * backtracking or that Annex B reads in surprising ways. Pure; throws {@link RegexSyntaxError}.
 *
 * Accepted: literals (code units, as RegExp without `u`), `.`, `[...]`/`[^...]` with ranges and
 * `\d \w \s \D \W \S`, the escapes `\t \n \v \f \r \0 \cX \xHH \uHHHH`, `\b` (backspace, in a class)
 * and `\` before any ASCII punctuation or non-ASCII character, anchors `^ $`, word boundaries `\b \B`,
 * groups `(...)`, `(?:...)`, `(?<name>...)`, alternation, quantifiers `* + ? {m} {m,} {m,n}` and their
 * lazy forms. Refused with a message naming the construct: backreferences (`\1`, `\k<name>`), lookahead
 * and lookbehind, inline modifiers, octal escapes, `\p{...}`, and escaped letters without a meaning.
 */
import { MilterConfigError } from '../errors.js';

/** A pattern the linear-time matcher does not accept (a syntax error or an unsupported construct): ERR_MILTER_CONFIG. */
export class RegexSyntaxError extends MilterConfigError {
  /** Index (UTF-16 code units) in the pattern where the problem starts. */
  readonly index: number;
  constructor(message: string, index: number) {
    super(`${message} (at offset ${index})`);
    this.name = 'RegexSyntaxError';
    this.index = index;
  }
}

/** Inclusive code-unit ranges, in any order. */
export type Ranges = ReadonlyArray<readonly [number, number]>;

/** Zero-width assertions. */
export type AssertKind = 'start' | 'end' | 'word' | 'not-word';

/** The parsed pattern. `max` of a repeat is Infinity for `*`, `+` and `{m,}`. */
export type RegexNode =
  | { type: 'empty' }
  | { type: 'char'; code: number }
  | { type: 'set'; ranges: Ranges; negate: boolean }
  | { type: 'assert'; kind: AssertKind }
  | { type: 'concat'; items: RegexNode[] }
  | { type: 'alt'; items: RegexNode[] }
  | { type: 'repeat'; item: RegexNode; min: number; max: number };

const DIGIT: Ranges = [[0x30, 0x39]];
const WORD: Ranges = [
  [0x30, 0x39],
  [0x41, 0x5a],
  [0x5f, 0x5f],
  [0x61, 0x7a],
];
/** WhiteSpace and LineTerminator of ECMA-262 (`\s`), Unicode 15 Zs included. */
const SPACE: Ranges = [
  [0x09, 0x0d],
  [0x20, 0x20],
  [0xa0, 0xa0],
  [0x1680, 0x1680],
  [0x2000, 0x200a],
  [0x2028, 0x2029],
  [0x202f, 0x202f],
  [0x205f, 0x205f],
  [0x3000, 0x3000],
  [0xfeff, 0xfeff],
];
/** Line terminators: what `.` does not match (no `s` flag). */
const LINE_TERMINATORS: Ranges = [
  [0x0a, 0x0a],
  [0x0d, 0x0d],
  [0x2028, 0x2029],
];

/** The complement of `ranges` over 0..0xFFFF. */
function complement(ranges: Ranges): Ranges {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  let next = 0;
  for (const [lo, hi] of sorted) {
    if (lo > next) out.push([next, lo - 1]);
    next = Math.max(next, hi + 1);
  }
  if (next <= 0xffff) out.push([next, 0xffff]);
  return out;
}

const CLASS_ESCAPES: Readonly<Record<string, Ranges>> = {
  d: DIGIT,
  D: complement(DIGIT),
  w: WORD,
  W: complement(WORD),
  s: SPACE,
  S: complement(SPACE),
};

const CONTROL_ESCAPES: Readonly<Record<string, number>> = { t: 9, n: 10, v: 11, f: 12, r: 13 };

const BRACED = /\{(\d+)(?:(,)(\d*))?\}/y;

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';
const isHex = (c: string | undefined): boolean => c !== undefined && /^[0-9a-fA-F]$/.test(c);
const isAsciiLetter = (c: string | undefined): boolean => c !== undefined && /^[A-Za-z]$/.test(c);

/** Parse `source` (the `i` flag does not change the syntax). Throws RegexSyntaxError. */
export function parseRegex(source: string): RegexNode {
  return new Parser(source).parse();
}

class Parser {
  private pos = 0;
  private readonly names = new Set<string>();

  constructor(private readonly src: string) {}

  parse(): RegexNode {
    const node = this.disjunction();
    if (this.pos < this.src.length) this.fail('unmatched ")"');
    return node;
  }

  private fail(message: string, at = this.pos): never {
    throw new RegexSyntaxError(message, at);
  }

  private peek(offset = 0): string | undefined {
    return this.src[this.pos + offset];
  }

  private disjunction(): RegexNode {
    const items = [this.alternative()];
    while (this.peek() === '|') {
      this.pos++;
      items.push(this.alternative());
    }
    return items.length === 1 ? (items[0] as RegexNode) : { type: 'alt', items };
  }

  private alternative(): RegexNode {
    const items: RegexNode[] = [];
    for (let c = this.peek(); c !== undefined && c !== '|' && c !== ')'; c = this.peek()) {
      items.push(this.term());
    }
    if (items.length === 0) return { type: 'empty' };
    return items.length === 1 ? (items[0] as RegexNode) : { type: 'concat', items };
  }

  private term(): RegexNode {
    const start = this.pos;
    const assertion = this.assertion();
    if (assertion !== undefined) {
      if (this.quantifierAhead()) this.fail('nothing to repeat: an assertion cannot be quantified');
      return assertion;
    }
    if (this.quantifierAhead()) this.fail('nothing to repeat');
    const atom = this.atom();
    const q = this.quantifier();
    if (q === undefined) return atom;
    if (this.quantifierAhead()) this.fail('nothing to repeat: a quantifier cannot be quantified');
    if (q.min > q.max) this.fail('numbers out of order in {} quantifier', start);
    return { type: 'repeat', item: atom, min: q.min, max: q.max };
  }

  private assertion(): RegexNode | undefined {
    const c = this.peek();
    if (c === '^' || c === '$') {
      this.pos++;
      return { type: 'assert', kind: c === '^' ? 'start' : 'end' };
    }
    if (c === '\\' && (this.peek(1) === 'b' || this.peek(1) === 'B')) {
      const kind = this.peek(1) === 'b' ? 'word' : 'not-word';
      this.pos += 2;
      return { type: 'assert', kind };
    }
    return undefined;
  }

  /** Is a quantifier (`*`, `+`, `?` or a well-formed `{...}`) next? */
  private quantifierAhead(): boolean {
    const c = this.peek();
    return c === '*' || c === '+' || c === '?' || (c === '{' && this.braced(false) !== undefined);
  }

  /** A well-formed `{m}`, `{m,}`, `{m,n}` at pos; consumed only when `consume`. */
  private braced(consume: boolean): { min: number; max: number } | undefined {
    BRACED.lastIndex = this.pos;
    const m = BRACED.exec(this.src);
    if (m === null) return undefined;
    if (consume) this.pos += m[0].length;
    const min = Number(m[1]);
    return { min, max: m[2] === undefined ? min : m[3] ? Number(m[3]) : Infinity };
  }

  private quantifier(): { min: number; max: number } | undefined {
    const c = this.peek();
    let q: { min: number; max: number } | undefined;
    if (c === '*') q = { min: 0, max: Infinity };
    else if (c === '+') q = { min: 1, max: Infinity };
    else if (c === '?') q = { min: 0, max: 1 };
    if (q !== undefined) this.pos++;
    else if (c === '{') q = this.braced(true);
    if (q === undefined) return undefined;
    // Lazy and greedy forms accept the same strings: laziness only changes which match is reported.
    if (this.peek() === '?') this.pos++;
    return q;
  }

  private atom(): RegexNode {
    const c = this.peek() as string;
    const at = this.pos;
    switch (c) {
      case '.':
        this.pos++;
        return { type: 'set', ranges: LINE_TERMINATORS, negate: true };
      case '(':
        return this.group();
      case '[':
        return this.characterClass();
      case '\\':
        return this.atomEscape();
      case ')':
        return this.fail('unmatched ")"', at);
      default:
        // `]`, `{` (not a quantifier) and `}` are literal, as in every browser (Annex B).
        this.pos++;
        return { type: 'char', code: c.charCodeAt(0) };
    }
  }

  private group(): RegexNode {
    const open = this.pos;
    this.pos++;
    if (this.peek() === '?') {
      const rest = this.src.slice(this.pos + 1, this.pos + 3);
      if (rest.startsWith(':')) this.pos += 2;
      else if (rest.startsWith('=') || rest.startsWith('!')) {
        this.fail(`lookahead (?${rest[0]}...) is not supported (no linear-time matching)`, open);
      } else if (rest === '<=' || rest === '<!') {
        this.fail(`lookbehind (?${rest}...) is not supported (no linear-time matching)`, open);
      } else if (rest.startsWith('<')) {
        const m = /^\?<([A-Za-z_$][\w$]*)>/.exec(this.src.slice(this.pos));
        if (m === null) this.fail('invalid capture group name', open);
        const name = m[1] as string;
        if (this.names.has(name)) this.fail(`duplicate capture group name "${name}"`, open);
        this.names.add(name);
        this.pos += m[0].length;
      } else this.fail(`group (?${rest[0] ?? ''}...) is not supported`, open);
    }
    const inner = this.disjunction();
    if (this.peek() !== ')') this.fail('unterminated group', open);
    this.pos++;
    return inner;
  }

  private atomEscape(): RegexNode {
    const at = this.pos;
    const c = this.peek(1);
    if (c === undefined) this.fail('\\ at end of pattern', at);
    const set = CLASS_ESCAPES[c];
    if (set !== undefined) {
      this.pos += 2;
      return { type: 'set', ranges: set, negate: false };
    }
    if (c >= '1' && c <= '9')
      this.fail(`backreference \\${c} is not supported (no linear-time matching)`, at);
    if (c === 'k') this.fail('backreference \\k<name> is not supported (no linear-time matching)', at);
    return { type: 'char', code: this.characterEscape(false) };
  }

  /** `\` + one of the escapes shared by atoms and classes; returns its code unit. */
  private characterEscape(inClass: boolean): number {
    const at = this.pos;
    const c = this.peek(1) as string;
    this.pos += 2;
    const control = CONTROL_ESCAPES[c];
    if (control !== undefined) return control;
    if (c === '0') {
      if (isDigit(this.peek())) this.fail('octal escapes are not supported', at);
      return 0;
    }
    if (c >= '1' && c <= '9') this.fail('octal escapes are not supported', at);
    if (inClass && c === 'b') return 8;
    if (c === 'c') {
      const letter = this.peek();
      if (!isAsciiLetter(letter)) this.fail('\\c must be followed by a letter', at);
      this.pos++;
      return (letter as string).charCodeAt(0) % 32;
    }
    if (c === 'x' || c === 'u') {
      const n = c === 'x' ? 2 : 4;
      const hex = this.src.slice(this.pos, this.pos + n);
      if (hex.length !== n || ![...hex].every(isHex)) {
        this.fail(`\\${c} must be followed by ${n} hex digits (\\u{...} needs the u flag)`, at);
      }
      this.pos += n;
      return parseInt(hex, 16);
    }
    if (c === 'p' || c === 'P') this.fail(`\\${c}{...} property escapes are not supported`, at);
    // Annex B reads `\` before a letter without a meaning as the letter: almost always a typo.
    if (/^[A-Za-z0-9]$/.test(c)) this.fail(`unknown escape \\${c}`, at);
    // `\` before anything else (punctuation, space, non-ASCII) is that character.
    return c.charCodeAt(0);
  }

  private characterClass(): RegexNode {
    const open = this.pos;
    this.pos++;
    let negate = false;
    if (this.peek() === '^') {
      negate = true;
      this.pos++;
    }
    const ranges: Array<readonly [number, number]> = [];
    for (;;) {
      const c = this.peek();
      if (c === undefined) this.fail('unterminated character class', open);
      if (c === ']') break;
      const atStart = this.pos;
      const first = this.classAtom();
      if (this.peek() === '-' && this.peek(1) !== ']' && this.peek(1) !== undefined) {
        this.pos++;
        const second = this.classAtom();
        if (typeof first === 'number' && typeof second === 'number') {
          if (first > second) this.fail('range out of order in character class', atStart);
          ranges.push([first, second]);
          continue;
        }
        // Annex B: a range with a class escape at either end is the union of both ends and `-`.
        for (const part of [first, 0x2d, second]) {
          if (typeof part === 'number') ranges.push([part, part]);
          else ranges.push(...part);
        }
        continue;
      }
      if (typeof first === 'number') ranges.push([first, first]);
      else ranges.push(...first);
    }
    this.pos++;
    return { type: 'set', ranges, negate };
  }

  /** One class member: a code unit, or the ranges of a class escape (`\d` etc.). */
  private classAtom(): number | Ranges {
    const c = this.peek() as string;
    if (c !== '\\') {
      this.pos++;
      return c.charCodeAt(0);
    }
    const e = this.peek(1);
    if (e === undefined) this.fail('\\ at end of pattern');
    const set = CLASS_ESCAPES[e];
    if (set !== undefined) {
      this.pos += 2;
      return set;
    }
    if (e === '-') {
      this.pos += 2;
      return 0x2d;
    }
    if (e === 'B') this.fail('\\B is not allowed in a character class');
    if (e === 'k') this.fail('unknown escape \\k');
    return this.characterEscape(true);
  }
}
