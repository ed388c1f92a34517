/**
 * The end of an exhaustive switch over a union: `value` is `never` there, so a member added to the union
 * and not handled fails to compile at the call. Reaching it at run time is a bug in milterd.
 */
export function unreachable(value: never, what: string): never {
  throw new Error(`unhandled ${what}: ${JSON.stringify(value)}`);
}
