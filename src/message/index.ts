/** The whole-message API: `messageFilter` and its `Transaction`. */
export { messageFilter } from './message-filter.js';
export type { MessageFilter } from './message-filter.js';
export type {
  HeaderField,
  MessageHeaders,
  MessageRecipients,
  ModificationSink,
  Transaction,
} from './transaction.js';
export { BODY_MEMORY_LIMIT } from '../session/body-store.js';
