/**
 * Macro storage with libmilter's visibility rules (protocol doc §6.2/§6.3): one slot per stage, a new
 * `D` packet replaces its stage's slot, later stages are cleared when an earlier stage command arrives,
 * and lookups search the latest stage first.
 */
import { PackedMacros, type MacroPairs as Pairs } from '../protocol/packed-macros.js';

/** Slot order = libmilter's lookup order reversed: CONNECT, HELO, MAIL, RCPT, DATA, EOH, EOM. */
const SLOT_OF: Readonly<Record<string, number>> = { C: 0, H: 1, M: 2, R: 3, T: 4, N: 5, E: 6 };
const SLOT_COUNT = 7;

/** One `D` packet: its pairs in packet order (a handful per stage: a scan beats a Map per packet), or still packed. */
type Slot = Pairs | PackedMacros;

function pairsOf(slot: Slot): Pairs {
  return slot instanceof PackedMacros ? slot.pairs() : slot;
}

/** The value of `name` in `pairs`; a later duplicate wins, as it would in a map. */
function find(pairs: Pairs, name: string): string | undefined {
  for (let i = pairs.length - 1; i >= 0; i--) {
    const pair = pairs[i] as readonly [string, string];
    if (pair[0] === name) return pair[1];
  }
  return undefined;
}

/** Per-connection macro store. */
export class MacroStore {
  private readonly slots: Array<Slot | undefined> = new Array<undefined>(SLOT_COUNT);

  /**
   * Store one `D` packet, its pairs (kept as given: the caller does not reuse the array) or the packed
   * packet (decoded when a lookup first reaches it). Stage letters without a slot (Postfix's `L`, `B`, `U`)
   * and packets without pairs are ignored, exactly like libmilter (§3.2).
   */
  define(stage: string, macros: Slot): void {
    const slot = SLOT_OF[stage];
    if (slot === undefined) return;
    if (macros instanceof PackedMacros ? macros.empty : macros.length === 0) return;
    this.slots[slot] = macros;
  }

  /**
   * Clear the slots that a command of `stage` invalidates (§6.2): `C` clears HELO onwards, `H` MAIL
   * onwards, `M` RCPT onwards, `R` DATA onwards. Other letters clear nothing.
   */
  clearAfter(stage: 'C' | 'H' | 'M' | 'R'): void {
    const from = (SLOT_OF[stage] as number) + 1;
    for (let i = from; i < SLOT_COUNT; i++) this.slots[i] = undefined;
  }

  /** Forget everything (OPTNEG, QUIT, QUIT_NC). */
  clear(): void {
    this.slots.fill(undefined);
  }

  /**
   * Look up `name`, latest stage first. A one-character name also matches its braced form and vice
   * versa (libmilter); a bare multi-character name also finds its braced form (`client_addr`).
   */
  get(name: string): string | undefined {
    let alt: string | undefined;
    if (name.length === 1) alt = `{${name}}`;
    else if (name.length === 3 && name[0] === '{' && name[2] === '}') alt = name[1];
    else if (name.length > 1 && name[0] !== '{') alt = `{${name}}`;
    for (let i = SLOT_COUNT - 1; i >= 0; i--) {
      const slot = this.slots[i];
      if (slot === undefined) continue;
      const pairs = pairsOf(slot);
      const v = find(pairs, name);
      if (v !== undefined) return v;
      if (alt !== undefined) {
        const w = find(pairs, alt);
        if (w !== undefined) return w;
      }
    }
    return undefined;
  }

  /** Every visible macro, later stages shadowing earlier ones. */
  all(): Record<string, string> {
    const out: Record<string, string> = {};
    for (let i = 0; i < SLOT_COUNT; i++) {
      const slot = this.slots[i];
      if (slot === undefined) continue;
      const pairs = pairsOf(slot);
      // An MTA-supplied name must never reach the prototype.
      for (const [k, v] of pairs) if (k !== '__proto__') out[k] = v;
    }
    return out;
  }
}
