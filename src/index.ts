/** milterd: the public library API. */
export * from './errors.js';
export * from './filter.js';
export * as protocol from './protocol/constants.js';
export type * from './protocol/types.js';
export type { MilterObserver, DecisionStage } from './observer.js';
