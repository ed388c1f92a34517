/** A pipeline of filters run as one filter: `pipeline(members)`, member conditions, the events it reports. */
export { pipeline } from './pipeline.js';
export { MEMBER_CONDITION_KEYS, parseMemberCondition } from './condition.js';
export type {
  MemberActionEvent,
  MemberCondition,
  MemberDecisionEvent,
  MemberErrorEvent,
  MemberEvent,
  MemberSkippedEvent,
  MemberStage,
  PipelineMember,
  PipelineOptions,
} from './types.js';
