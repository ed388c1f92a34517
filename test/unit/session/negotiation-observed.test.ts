/**
 * How a negotiation's outcome reaches the observer (the daemon's milterd_decisions_total): a refusal is
 * `refused`, never `continue`, whether the filter's negotiate callback failed, returned nothing, asked for
 * what the MTA did not offer, or there was no callback and the MTA's offer was unusable.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Filter } from '../../../src/filter.js';
import type { MilterObserver } from '../../../src/observer.js';
import { C, harness } from './helpers.js';

function observed(): { observer: MilterObserver; decisions: string[] } {
  const decisions: string[] = [];
  return { observer: { decision: (stage, d) => void decisions.push(`${stage}:${d}`) }, decisions };
}

test('a refused negotiation is observed as refused; an accepted one as continue', async () => {
  const rows: Array<{
    name: string;
    filter: Filter<unknown>;
    version?: number;
    out: string[];
    seen: string[];
  }> = [
    {
      name: 'callback throws',
      filter: {
        negotiate: () => {
          throw new Error('no');
        },
      },
      out: ['end:fatal'],
      seen: ['negotiate:refused'],
    },
    {
      name: 'callback returns nothing',
      filter: { negotiate: () => null as unknown as { actions: number; protocol: number } },
      out: ['end:fatal'],
      seen: ['negotiate:refused'],
    },
    {
      name: 'callback asks for an action the MTA did not offer',
      filter: { negotiate: () => ({ actions: 0x1000000, protocol: 0 }) },
      out: ['end:fatal'],
      seen: ['negotiate:refused'],
    },
    {
      name: 'no callback, MTA version 1',
      filter: {},
      version: 1,
      out: ['end:fatal'],
      seen: ['negotiate:refused'],
    },
    {
      name: 'callback accepts',
      filter: { negotiate: () => ({ actions: 0, protocol: 0 }) },
      out: ['O'],
      seen: ['negotiate:continue'],
    },
    { name: 'no callback, accepted', filter: {}, out: ['O'], seen: [] },
  ];
  for (const row of rows) {
    const o = observed();
    const h = harness(row.filter, { observer: o.observer });
    const out = await h.send(C.optneg(row.version ?? 6));
    assert.deepEqual(
      out.map((s) => (s.startsWith('O') ? 'O' : s)),
      row.out,
      row.name,
    );
    assert.deepEqual(o.decisions, row.seen, row.name);
    // A refusal the MTA caused is logged without a stack; a filter's own throw keeps it.
    const line = h.lines.find((l) => l.msg === 'negotiation refused');
    if (row.out[0] === 'end:fatal') {
      assert.ok(line, row.name);
      if (row.name === 'callback throws') assert.ok(line.err, row.name);
      else {
        assert.equal(line.code, 'ERR_MILTER_NEGOTIATION', row.name);
        assert.doesNotMatch(JSON.stringify(line), /stack/, row.name);
      }
    }
  }
});
