/**
 * A regular-expression matcher whose time is linear in the input: the pattern (the subset parsed by
 * regex-parse.ts) becomes a Thompson NFA, and `test` simulates every NFA state at once (Pike's set
 * simulation), so one input character costs at most one visit per state. V8's backtracking RegExp needs
 * exponential time on patterns like `^(a+)+$`; a policy pattern meets text an SMTP client chose, and the
 * event loop must never wait on it.
 *
 * Semantics equal `RegExp.prototype.test` without the `u` flag on the supported subset: search (a match
 * may start anywhere unless `^` anchors it), UTF-16 code units (a lone surrogate is one character, as
 * RegExp sees it), and `ignoreCase` as ECMA-262's Canonicalize for non-Unicode patterns.
 */
import { parseRegex, RegexSyntaxError, type RegexNode, type Ranges } from './regex-parse.js';

export { RegexSyntaxError } from './regex-parse.js';

/**
 * Most NFA states a pattern may compile to. Bounded repetitions are expanded (`x{3}` is three copies of
 * `x`), so `(a{100}){100}` would be 10 000 states. A match costs at most two visits per state per input
 * code unit: 1 000 states keep a 255-byte HELO around a millisecond even when every state stays alive
 * (`(?:a|b|.){0,160}c`), and a 2 KiB line near 10 ms; real HELO patterns need a few dozen states.
 */
export const MAX_REGEX_STATES = 1000;

/** Options of {@link compileLinearRegex}. */
export interface LinearRegexOptions {
  /** The `i` flag. Default false. */
  ignoreCase?: boolean;
  /** Refuse patterns that need more NFA states. Default {@link MAX_REGEX_STATES}. */
  maxStates?: number;
}

// State kinds. A state is four Int32 slots: kind, argument, out1, out2.
const CHAR = 0; // arg: code unit (canonicalized under ignoreCase)
const SET = 1; // arg: set index
const NSET = 2; // a negated set: matches what the bitmap does not hold
const ASSERT = 3; // arg: index in ASSERT_KINDS
const SPLIT = 4; // out1 and out2, both epsilon
const MATCH = 5;

const ASSERT_KINDS = ['start', 'end', 'word', 'not-word'] as const;

let canonTable: Uint16Array | undefined;

/**
 * ECMA-262 Canonicalize (non-Unicode, ignoreCase) of every code unit: its upper case if that is one code
 * unit and does not turn a non-ASCII character into an ASCII one. Built once, on first use (a few ms).
 */
function canon(): Uint16Array {
  if (canonTable !== undefined) return canonTable;
  const t = new Uint16Array(0x10000);
  for (let c = 0; c < 0x10000; c++) {
    const u = String.fromCharCode(c).toUpperCase();
    const cu = u.length === 1 ? u.charCodeAt(0) : c;
    t[c] = c >= 128 && cu < 128 ? c : cu;
  }
  canonTable = t;
  return t;
}

const isWordUnit = (c: number): boolean =>
  (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f;

/** NFA states needed for `node`, saturating at `cap + 1`. Mirrors `Builder.build`. */
function sizeOf(node: RegexNode, cap: number): number {
  const sat = (n: number): number => Math.min(n, cap + 1);
  switch (node.type) {
    case 'empty':
      return 0;
    case 'char':
    case 'set':
    case 'assert':
      return 1;
    case 'concat':
      return node.items.reduce((n, item) => sat(n + sizeOf(item, cap)), 0);
    case 'alt':
      return node.items.reduce((n, item) => sat(n + sizeOf(item, cap)), sat(node.items.length - 1));
    case 'repeat': {
      const s = sizeOf(node.item, cap);
      if (s === 0 || node.max === 0) return 0;
      if (node.max === Infinity) return sat(Math.max(node.min, 1) * s + 1);
      return sat(node.min * s + (node.max - node.min) * (s + 1));
    }
  }
}

/** Builds the NFA back to front: `build(node, next)` returns the entry state of `node` followed by `next`. */
class Builder {
  readonly code: number[] = [];
  readonly sets: Uint32Array[] = [];
  readonly #setIndex = new Map<string, number>();

  constructor(private readonly table: Uint16Array | undefined) {}

  state(kind: number, arg: number, out1: number, out2: number): number {
    this.code.push(kind, arg, out1, out2);
    return this.code.length / 4 - 1;
  }

  build(node: RegexNode, next: number): number {
    switch (node.type) {
      case 'empty':
        return next;
      case 'char':
        return this.state(CHAR, this.table ? (this.table[node.code] as number) : node.code, next, -1);
      case 'set':
        return this.state(node.negate ? NSET : SET, this.set(node.ranges), next, -1);
      case 'assert':
        return this.state(ASSERT, ASSERT_KINDS.indexOf(node.kind), next, -1);
      case 'concat': {
        let entry = next;
        for (let i = node.items.length - 1; i >= 0; i--)
          entry = this.build(node.items[i] as RegexNode, entry);
        return entry;
      }
      case 'alt': {
        let entry = this.build(node.items[node.items.length - 1] as RegexNode, next);
        for (let i = node.items.length - 2; i >= 0; i--) {
          entry = this.state(SPLIT, 0, this.build(node.items[i] as RegexNode, next), entry);
        }
        return entry;
      }
      case 'repeat':
        return this.repeat(node.item, node.min, node.max, next);
    }
  }

  // Only reached after compileLinearRegex has checked sizeOf(): each loop iteration below adds at least
  // one state, so no loop runs more than the state cap.
  private repeat(item: RegexNode, min: number, max: number, next: number): number {
    if (max === 0 || sizeOf(item, 1) === 0) return next;
    let entry = next;
    if (max === Infinity) {
      // x{m,} = x{m-1} x+, where x+ is x followed by a split back to x or on to `next`; x* enters at the split.
      const loop = this.state(SPLIT, 0, -1, next);
      const body = this.build(item, loop);
      this.code[loop * 4 + 2] = body;
      entry = min === 0 ? loop : body;
      for (let i = 1; i < min; i++) entry = this.build(item, entry);
      return entry;
    }
    // x{m,n} = x{m} followed by n-m nested optional copies, each of which may skip to `next`.
    for (let i = 0; i < max - min; i++) entry = this.state(SPLIT, 0, this.build(item, entry), next);
    for (let i = 0; i < min; i++) entry = this.build(item, entry);
    return entry;
  }

  /** A 64 Kibit bitmap of the (canonicalized) members; identical sets share one bitmap. */
  private set(ranges: Ranges): number {
    const key = ranges.map(([lo, hi]) => `${lo}-${hi}`).join(',');
    const known = this.#setIndex.get(key);
    if (known !== undefined) return known;
    const bits = new Uint32Array(0x800);
    for (const [lo, hi] of ranges) {
      for (let c = lo; c <= hi; c++) {
        const k = this.table ? (this.table[c] as number) : c;
        bits[k >>> 5] = (bits[k >>> 5] as number) | (1 << (k & 31));
      }
    }
    this.sets.push(bits);
    this.#setIndex.set(key, this.sets.length - 1);
    return this.sets.length - 1;
  }
}

/**
 * A compiled pattern. `test` never backtracks: per input code unit it visits each state at most twice
 * (once in the epsilon closure, once to test the character), whatever the pattern and the input.
 */
export class LinearRegex {
  /** NFA states (at most the `maxStates` it was compiled with). */
  readonly size: number;
  /**
   * State visits made by the latest `test` call (closure visits plus character tests): the instrumented
   * measure of its cost, at most `2 × size × (input length + 1)`.
   */
  steps = 0;
  readonly #code: Int32Array;
  readonly #sets: Uint32Array[];
  readonly #start: number;
  readonly #table: Uint16Array | undefined;
  // Work lists, "already listed" marks and the closure stack, reused between calls (a call never re-enters).
  readonly #lists: [Int32Array, Int32Array];
  readonly #mark: Uint32Array;
  readonly #stack: Int32Array;
  #generation = 0;
  #visits = 0;

  /** Use {@link compileLinearRegex}. */
  constructor(
    readonly source: string,
    readonly ignoreCase: boolean,
    code: number[],
    sets: Uint32Array[],
    start: number,
    table: Uint16Array | undefined,
  ) {
    this.#code = Int32Array.from(code);
    this.#sets = sets;
    this.#start = start;
    this.#table = table;
    this.size = code.length / 4;
    this.#lists = [new Int32Array(this.size), new Int32Array(this.size)];
    this.#mark = new Uint32Array(this.size);
    this.#stack = new Int32Array(this.size + 1);
  }

  /** Does the pattern match anywhere in `input` (RegExp.prototype.test without the `u` flag)? */
  test(input: string): boolean {
    this.#visits = 0;
    const matched = this.#run(input);
    this.steps = this.#visits;
    return matched;
  }

  #run(input: string): boolean {
    const code = this.#code;
    const table = this.#table;
    let [clist, nlist] = this.#lists;
    this.#nextGeneration();
    let count = this.#close(input, 0, this.#start, clist, 0);
    if (count < 0) return true;
    for (let i = 0; i < input.length; i++) {
      const unit = input.charCodeAt(i);
      const key = table === undefined ? unit : (table[unit] as number);
      this.#nextGeneration();
      this.#visits += count;
      let ncount = 0;
      for (let t = 0; t < count; t++) {
        const at = (clist[t] as number) * 4;
        const kind = code[at] as number;
        const arg = code[at + 1] as number;
        const ok =
          kind === CHAR
            ? arg === key
            : ((((this.#sets[arg] as Uint32Array)[key >>> 5] as number) >>> (key & 31)) & 1) ===
              (kind === SET ? 1 : 0);
        if (!ok) continue;
        ncount = this.#close(input, i + 1, code[at + 2] as number, nlist, ncount);
        if (ncount < 0) return true;
      }
      // Search semantics: a match attempt may also start at every later position.
      ncount = this.#close(input, i + 1, this.#start, nlist, ncount);
      if (ncount < 0) return true;
      [clist, nlist] = [nlist, clist];
      count = ncount;
    }
    return false;
  }

  /** A new "already listed" generation: one per input position. */
  #nextGeneration(): void {
    this.#generation = (this.#generation + 1) >>> 0;
    if (this.#generation === 0) {
      this.#mark.fill(0);
      this.#generation = 1;
    }
  }

  /**
   * Add the epsilon closure of `from` at input position `pos` to `list` (after `count` entries), keeping
   * only the states that consume a character. Returns the new count, or -1 once MATCH is reached.
   */
  #close(input: string, pos: number, from: number, list: Int32Array, count: number): number {
    const code = this.#code;
    const mark = this.#mark;
    const gen = this.#generation;
    const stack = this.#stack;
    if (mark[from] === gen) return count;
    mark[from] = gen;
    stack[0] = from;
    let sp = 1;
    while (sp > 0) {
      const s = stack[--sp] as number;
      this.#visits++;
      const at = s * 4;
      const kind = code[at] as number;
      let out1 = -1;
      let out2 = -1;
      if (kind === MATCH) return -1;
      if (kind === SPLIT) {
        out1 = code[at + 2] as number;
        out2 = code[at + 3] as number;
      } else if (kind === ASSERT) {
        if (this.#holds(code[at + 1] as number, input, pos)) out1 = code[at + 2] as number;
      } else {
        list[count++] = s;
      }
      if (out2 >= 0 && mark[out2] !== gen) {
        mark[out2] = gen;
        stack[sp++] = out2;
      }
      if (out1 >= 0 && mark[out1] !== gen) {
        mark[out1] = gen;
        stack[sp++] = out1;
      }
    }
    return count;
  }

  #holds(kind: number, input: string, pos: number): boolean {
    switch (ASSERT_KINDS[kind]) {
      case 'start':
        return pos === 0;
      case 'end':
        return pos === input.length;
      default: {
        const before = pos > 0 && isWordUnit(input.charCodeAt(pos - 1));
        const after = pos < input.length && isWordUnit(input.charCodeAt(pos));
        return (before !== after) === (ASSERT_KINDS[kind] === 'word');
      }
    }
  }
}

/**
 * Compile `source` for linear-time matching. Throws {@link RegexSyntaxError} for a syntax error, for a
 * construct that cannot be matched in linear time (backreferences, lookaround; the message names it) and
 * for a pattern that needs more than `maxStates` states once its bounded repetitions are expanded.
 */
export function compileLinearRegex(source: string, options: LinearRegexOptions = {}): LinearRegex {
  const ast = parseRegex(source);
  const cap = options.maxStates ?? MAX_REGEX_STATES;
  if (sizeOf(ast, cap) + 1 > cap) {
    throw new RegexSyntaxError(
      `pattern too large: more than ${cap} states once repetitions such as {m,n} are expanded`,
      0,
    );
  }
  const ignoreCase = options.ignoreCase ?? false;
  const table = ignoreCase ? canon() : undefined;
  const builder = new Builder(table);
  const match = builder.state(MATCH, 0, -1, -1);
  const start = builder.build(ast, match);
  return new LinearRegex(source, ignoreCase, builder.code, builder.sets, start, table);
}
