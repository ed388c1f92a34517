/** The pipeline API the daemon builds on, in one place (src/pipeline: the pipeline and upstream milters). */
export { parseMemberCondition, pipeline, type MemberEvent, type PipelineMember } from '../pipeline/index.js';
export { upstreamFilter, type UpstreamEvent, type UpstreamFailureAction } from '../pipeline/upstream.js';
