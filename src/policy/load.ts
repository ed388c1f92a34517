/**
 * The YAML policy file: parse, validate and locate errors. Any problem (YAML syntax, unknown key, wrong
 * type, bad value) refuses the whole file with a MilterConfigError naming the file, the line, the column
 * and the field (`rules[1].when.client[0]`). The whole file is checked: every problem is reported, in
 * file order (`checkPolicy`; `parsePolicy` throws them as one error). The format is documented in
 * docs/policy.md.
 */
import { LineCounter, isAlias, isMap, isScalar, isSeq, type Document, type Node } from 'yaml';
import { MilterConfigError } from '../errors.js';
import { MAX_SHUTDOWN_TEXT_BYTES, replyTextBytes } from './chain.js';
import {
  LIMIT_KINDS,
  ON_STORE_ERROR,
  compileConditions,
  type OnStoreError,
  type PolicyConfig,
  type PolicyRule,
  type RuleLimit,
} from './rules.js';
import { MAX_PREFIX, parseCidr, parseDuration, parseSize, type Cidr } from './values.js';
import {
  checkYamlSize,
  didYouMean,
  parseYamlDocument,
  positionAt,
  readYamlFile,
  YamlFileTooLargeError,
} from './yaml-file.js';

/** The keys of each mapping of a policy file (the JSON Schema in schema/ is checked against them). */
export const TOP_KEYS = [
  'version',
  'dry-run',
  'hook-timeout',
  'reply-text',
  'track-bytes',
  'client-prefix',
  'rules',
] as const;
export const PREFIX_KEYS = Object.keys(MAX_PREFIX) as ReadonlyArray<keyof typeof MAX_PREFIX>;
export const RULE_KEYS = [
  'name',
  'text',
  'dry-run',
  'when',
  'min-attempts',
  'window',
  'on-store-error',
  ...LIMIT_KINDS,
] as const;
export const WHEN_KEYS = ['client', 'not-client', 'authenticated', 'helo'] as const;

/** Thrown by Walker.fail after recording the problem: abandons the part being checked, not the file. */
class Abandon extends Error {}

interface Entry {
  key: string;
  keyNode: Node;
  value: Node | null;
}

/**
 * Walks the YAML AST with positions, so that every error can name its line and column. A problem is
 * recorded and abandons only the part being checked (see `attempt`), so one run finds them all.
 */
class Walker {
  readonly problems: MilterConfigError[] = [];

  constructor(
    private readonly file: string,
    private readonly lines: LineCounter,
    private readonly doc: Document,
  ) {}

  /** Record a problem at `node` (else at `fallback`). */
  report(node: Node | null | undefined, field: string, message: string, fallback?: Node | null): void {
    const at = node?.range?.[0] ?? fallback?.range?.[0];
    const pos = at === undefined ? undefined : positionAt(this.lines, at);
    const where = `${this.file}${pos === undefined ? '' : `:${pos.line}:${pos.column}`}`;
    this.problems.push(
      new MilterConfigError(`${where}: ${field || '(top level)'}: ${message}`, {
        file: this.file,
        line: pos?.line,
        column: pos?.column,
        field,
      }),
    );
  }

  /** Record a problem and abandon the part being checked (caught by the enclosing `attempt`). */
  fail(node: Node | null | undefined, field: string, message: string, fallback?: Node | null): never {
    this.report(node, field, message, fallback);
    throw new Abandon();
  }

  /** Run one independent check; undefined when it failed (its problem is recorded). */
  attempt<T>(check: () => T): T | undefined {
    try {
      return check();
    } catch (err) {
      if (err instanceof Abandon) return undefined;
      throw err;
    }
  }

  deref(node: Node | null): Node | null {
    if (node !== null && isAlias(node)) return (node.resolve(this.doc) as Node | undefined) ?? null;
    return node;
  }

  /** A mapping's entries with a known string key; unknown keys are reported and left out. */
  map(node: Node | null, field: string, allowed: readonly string[], parent?: Node | null): Entry[] {
    const n = this.deref(node);
    if (n === null || !isMap(n)) return this.fail(n, field, 'expected a mapping (key: value)', parent);
    const entries: Entry[] = [];
    for (const pair of n.items) {
      const keyNode = pair.key as Node | null;
      const key = keyNode !== null && isScalar(keyNode) ? keyNode.value : undefined;
      const name = typeof key === 'string' ? key : String(key);
      const path = field ? `${field}.${name}` : name;
      if (typeof key !== 'string' || !allowed.includes(key)) {
        const guess = didYouMean(name, allowed);
        const hint =
          guess === undefined ? `expected one of: ${allowed.join(', ')}` : `did you mean "${guess}"?`;
        this.report(keyNode, path, `unknown key "${name}" (${hint})`, n);
        continue;
      }
      entries.push({ key, keyNode: keyNode as Node, value: this.deref(pair.value as Node | null) });
    }
    return entries;
  }

  scalar(e: Entry, field: string): unknown {
    if (e.value === null || !isScalar(e.value))
      return this.fail(e.value, field, 'expected a single value', e.keyNode);
    return e.value.value;
  }

  bool(e: Entry, field: string): boolean {
    const v = this.scalar(e, field);
    return typeof v === 'boolean' ? v : this.fail(e.value, field, 'expected true or false');
  }

  int(e: Entry, field: string, min: number): number {
    const v = this.scalar(e, field);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
      return this.fail(e.value, field, `expected a whole number >= ${min}`);
    }
    return v;
  }

  text(e: Entry, field: string, replyLine = false): string {
    const v = this.scalar(e, field);
    if (typeof v !== 'string' || v.trim() === '')
      return this.fail(e.value, field, 'expected a non-empty string');
    if (/[\r\n\0]/.test(v)) return this.fail(e.value, field, 'a reply text must be one line');
    const text = v.trim();
    if (replyLine) {
      // What the MTA receives counts: UTF-8 bytes, each % doubled, after `421 4.7.0 `.
      const bytes = replyTextBytes(text);
      if (bytes > MAX_SHUTDOWN_TEXT_BYTES) {
        return this.fail(
          e.value,
          field,
          `a reply text must fit one reply line: ${bytes} bytes as sent (UTF-8, each % doubled), at most ${MAX_SHUTDOWN_TEXT_BYTES}`,
        );
      }
    } else if (v.length > 900)
      return this.fail(e.value, field, 'a reply text must be at most 900 characters');
    return text;
  }

  parsed<T>(e: Entry, field: string, parse: (v: unknown) => T, min = 0): T {
    const v = this.scalar(e, field);
    try {
      const out = parse(v);
      if (typeof out === 'number' && out <= min) throw new Error(`must be greater than ${min}`);
      return out;
    } catch (err) {
      return this.fail(e.value, field, (err as Error).message);
    }
  }

  cidrs(e: Entry, field: string): Cidr[] {
    const items =
      e.value !== null && isSeq(e.value) ? e.value.items.map((n) => this.deref(n as Node | null)) : [e.value];
    if (items.length === 0) this.fail(e.value, field, 'expected at least one CIDR block', e.keyNode);
    return items.map((n, i) => {
      const path = e.value !== null && isSeq(e.value) ? `${field}[${i}]` : field;
      if (n === null || !isScalar(n))
        return this.fail(n, path, 'expected a CIDR block such as 192.0.2.0/24', e.keyNode);
      try {
        return parseCidr(n.value);
      } catch (err) {
        return this.fail(n, path, (err as Error).message);
      }
    });
  }
}

/**
 * Parse and validate a policy document. `file` is only used in error messages (and kept in the result).
 * An empty document is a policy without rules. Throws MilterConfigError (code ERR_MILTER_CONFIG), also
 * for a text over MAX_YAML_FILE_BYTES or nested deeper than MAX_YAML_DEPTH (yaml-file.ts).
 */
export function parsePolicy(text: string, file = '<policy>'): PolicyConfig {
  const { config, problems } = checkPolicy(text, file);
  if (problems.length > 0) throw MilterConfigError.of(problems);
  return config;
}

/**
 * Parse and validate a policy document, collecting every problem (sorted by position) instead of
 * stopping at the first; `config` is only meaningful when there are none. YAML syntax errors are all
 * reported, and then the document is not checked further (its shape is a guess).
 */
export function checkPolicy(
  text: string,
  file = '<policy>',
): { config: PolicyConfig; problems: MilterConfigError[] } {
  const config: PolicyConfig = { file, dryRun: false, rules: [] };
  try {
    checkYamlSize(text);
  } catch (err) {
    return { config, problems: [tooLarge(file, err as YamlFileTooLargeError)] };
  }
  const lines = new LineCounter();
  const doc = parseYamlDocument(text, lines);
  const w = new Walker(file, lines, doc);
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((syntax) => {
      const { line, column } = positionAt(lines, syntax.pos[0]);
      const message = syntax.message.split('\n')[0] ?? syntax.code;
      return new MilterConfigError(`${file}:${line}:${column}: YAML syntax error: ${message}`, {
        file,
        line,
        column,
        field: '',
      });
    });
    return { config, problems };
  }
  const root = doc.contents as Node | null;
  if (root !== null) w.attempt(() => checkTopLevel(w, root, config, lines));
  const problems = w.problems.sort(
    (a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0),
  );
  return { config, problems };
}

function checkTopLevel(w: Walker, root: Node, config: PolicyConfig, lines: LineCounter): void {
  for (const e of w.map(root, '', TOP_KEYS)) {
    w.attempt(() => checkTopEntry(w, e, config, lines));
  }
}

function checkTopEntry(w: Walker, e: Entry, config: PolicyConfig, lines: LineCounter): void {
  const f = e.key;
  switch (e.key) {
    case 'version':
      if (w.scalar(e, f) !== 1) w.fail(e.value, f, 'only version 1 is supported');
      break;
    case 'dry-run':
      config.dryRun = w.bool(e, f);
      break;
    case 'hook-timeout':
      config.hookTimeoutMs = w.parsed(e, f, parseDuration, -1);
      break;
    case 'reply-text':
      config.replyText = w.text(e, f, true);
      break;
    case 'track-bytes':
      config.trackBytes = w.bool(e, f);
      break;
    case 'client-prefix': {
      const prefix: { ipv4?: number; ipv6?: number } = {};
      for (const p of w.map(e.value, f, PREFIX_KEYS, e.keyNode)) {
        w.attempt(() => {
          const family = p.key as keyof typeof MAX_PREFIX;
          const max = MAX_PREFIX[family];
          const bits = w.int(p, `${f}.${p.key}`, 0);
          if (bits > max) w.fail(p.value, `${f}.${p.key}`, `expected a prefix length 0..${max}`);
          prefix[family] = bits;
        });
      }
      config.clientPrefix = prefix;
      break;
    }
    case 'rules': {
      const seq = e.value;
      if (seq === null || (isScalar(seq) && seq.value === null)) break;
      if (!isSeq(seq)) return w.fail(seq, f, 'expected a list of rules', e.keyNode);
      const names = new Set<string>();
      seq.items.forEach((item, i) => {
        w.attempt(() => {
          const rule = parseRule(w, w.deref(item as Node | null), `rules[${i}]`, e.value, lines);
          if (names.has(rule.name)) {
            // Default names (the limit kind) get a suffix; explicit duplicates are an error.
            if (rule.explicitName)
              w.fail(rule.nameNode, `rules[${i}].name`, `duplicate rule name "${rule.name}"`);
            rule.rule.name = `${rule.name}-${i + 1}`;
          }
          names.add(rule.rule.name);
          config.rules.push(rule.rule);
        });
      });
      break;
    }
  }
}

function parseRule(
  w: Walker,
  node: Node | null,
  field: string,
  parent: Node | null,
  lines: LineCounter,
): { rule: PolicyRule; name: string; explicitName: boolean; nameNode: Node | null } {
  const problemsBefore = w.problems.length;
  const entries = w.map(node, field, RULE_KEYS, parent);
  const limits = entries.filter((e) => (LIMIT_KINDS as readonly string[]).includes(e.key));
  if (limits.length !== 1) {
    const at = limits[1]?.keyNode ?? node;
    w.report(at, field, `a rule needs exactly one limit, one of: ${LIMIT_KINDS.join(', ')}`);
  }
  const limitEntry = limits.length === 1 ? limits[0] : undefined;
  const get = (key: string): Entry | undefined => entries.find((e) => e.key === key);
  const onlyWith = (key: string, kind: string): void => {
    const e = get(key);
    if (e !== undefined && limitEntry !== undefined && limitEntry.key !== kind)
      w.report(e.keyNode, `${field}.${key}`, `only allowed with ${kind}`);
  };
  onlyWith('min-attempts', 'max-failure-ratio');
  onlyWith('window', 'max-messages-per-client');
  const storeError = get('on-store-error');
  if (
    storeError !== undefined &&
    limitEntry !== undefined &&
    limitEntry.key !== 'max-concurrent-sessions' &&
    limitEntry.key !== 'max-messages-per-client'
  )
    w.report(
      storeError.keyNode,
      `${field}.on-store-error`,
      'only allowed with max-concurrent-sessions or max-messages-per-client',
    );
  // Each part is checked even when another one failed, so that one run reports every problem.
  const limit =
    limitEntry === undefined
      ? undefined
      : w.attempt(() => parseLimit(w, limitEntry, `${field}.${limitEntry.key}`, get));
  const nameEntry = get('name');
  const name = nameEntry ? w.attempt(() => w.text(nameEntry, `${field}.name`)) : limit?.kind;
  const textEntry = get('text');
  const text = textEntry ? w.attempt(() => w.text(textEntry, `${field}.text`, true)) : undefined;
  const dry = get('dry-run');
  const dryRun = dry ? w.attempt(() => w.bool(dry, `${field}.dry-run`)) : undefined;
  const onStoreError = storeError
    ? w.attempt(() => {
        const v = w.scalar(storeError, `${field}.on-store-error`);
        if (typeof v !== 'string' || !(ON_STORE_ERROR as readonly string[]).includes(v))
          w.fail(
            storeError.value,
            `${field}.on-store-error`,
            `expected one of: ${ON_STORE_ERROR.join(', ')}`,
          );
        return v as OnStoreError;
      })
    : undefined;
  const when = get('when');
  const conditions: NonNullable<PolicyRule['when']> = {};
  if (when) {
    const wf = `${field}.when`;
    for (const c of w.attempt(() => w.map(when.value, wf, WHEN_KEYS, when.keyNode)) ?? []) {
      const cf = `${wf}.${c.key}`;
      w.attempt(() => {
        if (c.key === 'client') conditions.client = w.cidrs(c, cf);
        else if (c.key === 'not-client') conditions.notClient = w.cidrs(c, cf);
        else if (c.key === 'authenticated') conditions.authenticated = w.bool(c, cf);
        else {
          conditions.helo = w.text(c, cf);
          try {
            compileConditions({ helo: conditions.helo });
          } catch (err) {
            w.fail(c.value, cf, `invalid regular expression: ${(err as Error).message}`);
          }
        }
      });
    }
  }
  if (limit === undefined || name === undefined || w.problems.length > problemsBefore) throw new Abandon();
  const rule: PolicyRule = { name, limit, line: node?.range ? lines.linePos(node.range[0]).line : undefined };
  if (text !== undefined) rule.text = text;
  if (dryRun !== undefined) rule.dryRun = dryRun;
  if (onStoreError !== undefined) rule.onStoreError = onStoreError;
  if (when) rule.when = conditions;
  return { rule, name, explicitName: nameEntry !== undefined, nameNode: nameEntry?.value ?? null };
}

function parseLimit(w: Walker, e: Entry, f: string, get: (key: string) => Entry | undefined): RuleLimit {
  const kind = e.key as RuleLimit['kind'];
  switch (kind) {
    case 'max-messages':
    case 'max-failed-messages':
    case 'max-concurrent-sessions':
      return { kind, max: w.int(e, f, 1) };
    case 'max-rejected-recipients':
      return { kind, max: w.int(e, f, 0) };
    case 'max-bytes':
      return { kind, max: w.parsed(e, f, parseSize) };
    case 'max-session-age':
      return { kind, maxMs: w.parsed(e, f, parseDuration) };
    case 'max-failure-ratio': {
      const ratio = w.scalar(e, f);
      if (typeof ratio !== 'number' || !(ratio >= 0 && ratio < 1))
        w.fail(e.value, f, 'expected a ratio in [0, 1)');
      const min = get('min-attempts');
      const fm = f.replace(/[^.]+$/, 'min-attempts');
      return { kind, ratio, minAttempts: min ? w.int(min, fm, 1) : 10 };
    }
    case 'max-messages-per-client': {
      const win = get('window');
      const fw = f.replace(/[^.]+$/, 'window');
      return { kind, max: w.int(e, f, 1), windowMs: win ? w.parsed(win, fw, parseDuration) : 3_600_000 };
    }
  }
}

function tooLarge(file: string, err: YamlFileTooLargeError): MilterConfigError {
  return new MilterConfigError(`${file}: policy file too large: ${err.message}`, { file }, { cause: err });
}

/**
 * Read and parse a policy file. Unreadable files, and files over MAX_YAML_FILE_BYTES (1 MiB, refused
 * before parsing), are refused with MilterConfigError too.
 */
export async function loadPolicyFile(path: string): Promise<PolicyConfig> {
  let text: string;
  try {
    text = await readYamlFile(path);
  } catch (err) {
    if (err instanceof YamlFileTooLargeError) throw tooLarge(path, err);
    throw new MilterConfigError(
      `${path}: cannot read policy file: ${(err as Error).message}`,
      { file: path },
      { cause: err },
    );
  }
  return parsePolicy(text, path);
}
