/**
 * The benchmark filter (continue at every stage, add one header at EOM), in the two ways a filter is
 * written: synchronous callbacks (like the C and Go candidates) and async ones (like most users' filters).
 *
 * Every callback is defined on purpose: milterd negotiates absent callbacks away (SMFIP_NO*), which
 * would make it do less work than libmilter and go-milter, where every callback is registered.
 */
import type { Filter } from '../../src/filter.js';
import { pipeline } from '../../src/pipeline/index.js';

/** The benchmark filter, synchronous callbacks (like the C and Go versions). */
export const benchFilter: Filter = {
  name: 'bench',
  actions: ['addHeader'],
  connect() {},
  helo() {},
  envfrom() {},
  envrcpt() {},
  data() {},
  header() {},
  eoh() {},
  body() {},
  eom(ctx) {
    ctx.addHeader('X-Bench', 'milterd-bench');
  },
  abort() {},
  close() {},
};

/** The same filter written the way most users will write it: async callbacks. */
export const benchFilterAsync: Filter = {
  name: 'bench-async',
  actions: ['addHeader'],
  async connect() {},
  async helo() {},
  async envfrom() {},
  async envrcpt() {},
  async data() {},
  async header() {},
  async eoh() {},
  async body() {},
  async eom(ctx) {
    ctx.addHeader('X-Bench', 'milterd-bench');
  },
  async abort() {},
  async close() {},
};

/** A member that takes every stage and changes nothing (continue everywhere, no actions). */
const passThrough: Filter = {
  name: 'pass',
  actions: [],
  connect() {},
  helo() {},
  envfrom() {},
  envrcpt() {},
  data() {},
  header() {},
  eoh() {},
  body() {},
  eom() {},
  abort() {},
  close() {},
};

/** `filter` as the last of `members` pipeline members; the ones before it pass everything through. */
export function benchPipeline(filter: Filter, members: number): Filter {
  const list = Array.from({ length: members - 1 }, (_, i) => ({ name: `pass${i + 1}`, filter: passThrough }));
  return pipeline([...list, { name: 'bench', filter }]);
}
