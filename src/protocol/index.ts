/**
 * `milterd/protocol`: the sendmail milter protocol as a pure codec. Constants keep their protocol names
 * (`SMFIC_*`, `SMFIR_*`, `SMFIF_*`, `SMFIP_*`); frames in, typed commands and responses out, and back.
 */
export * from './constants.js';
export type * from './types.js';
export { FrameDecoder } from './frame.js';
export { decodeCommand, decodeResponse } from './decode.js';
export { encodeCommand, encodeCommands, encodeResponse, encodeResponses } from './encode.js';
export { fromWireBytes, wireBytes } from './wire-string.js';
