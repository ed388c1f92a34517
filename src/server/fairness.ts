/**
 * Fairness between connections. Commands answered synchronously, and async callbacks completing in
 * microtasks, run without giving the event loop back, so one connection with pipelined commands could be
 * served for its whole read budget (and libuv reads a socket up to 32 times per wake-up) while every other
 * socket waits. After TURN_COMMANDS commands in one event-loop turn a connection yields: it goes on in
 * setImmediate, after the other sockets' I/O. One message's commands arriving in one read never get that far.
 */

/**
 * Commands one connection handles in one event-loop turn before it lets the others run. A whole Postfix
 * message is about 25 frames; 64 keeps a flood's share of a turn near a millisecond.
 * @internal
 */
export const TURN_COMMANDS = 64;

/**
 * Event-loop turn counter, advanced by a setImmediate scheduled only when a connection asks for it (when
 * it reaches TURN_COMMANDS): a connection whose mark still equals `turn` has not seen the loop turn.
 */
let turn = 0;
let turnTickPending = false;
const advanceTurn = (): void => {
  turn++;
  turnTickPending = false;
};

/** The current event-loop turn's number (schedules the tick that ends it). */
export function currentTurn(): number {
  if (!turnTickPending) {
    turnTickPending = true;
    setImmediate(advanceTurn);
  }
  return turn;
}
