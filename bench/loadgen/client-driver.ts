/**
 * The generic load driver: the public `MilterClient` (src/client/client.ts), one async loop per
 * connection slot. Same packets (script.ts) and checks as the lean driver, through the typed client API;
 * use `--driver client` to compare the two (the lean driver is the default because the generic client
 * costs more CPU per command in the load generator, which shares the machine with the server). The write
 * boundaries are the client's own: a MACRO goes out with its command, ABORT on its own, and an event the
 * filter negotiated away takes its macros with it; only the lean driver reproduces the MTA's exactly.
 */
import { performance } from 'node:perf_hooks';
import { MilterClient, type ClientReply } from '../../src/client/client.js';
import { SMFIF_ADDHDRS, macroPacketStage, type MacroPacketStage } from '../../src/protocol/constants.js';
import type { MilterCommand } from '../../src/protocol/types.js';
import { Histogram } from '../lib/histogram.js';
import type { Driver, DriverHooks } from './lean-driver.js';
import {
  messageEvents,
  OFFER_ACTIONS,
  OFFER_PROTOCOL,
  OFFER_VERSION,
  STAT_INDEX,
  STAT_NAMES,
  sessionEvents,
  type ScriptEvent,
  type StatName,
} from './script.js';
import type { LoadConfig, WorkerStats } from './types.js';

/** The client takes macro stages by name; the script holds the packets' command letters. */
function stageOf(letter: string): MacroPacketStage {
  const stage = macroPacketStage(letter);
  if (stage === undefined) throw new Error(`no macro stage for command letter "${letter}"`);
  return stage;
}

class ClientDriver implements Driver {
  private readonly latency = STAT_NAMES.map(() => new Histogram());
  private messages = 0;
  private errors = 0;
  private warmupErrors = 0;
  private marked = false;
  private readonly errorSamples: string[] = [];
  private started = 0;
  private stopping = false;
  private connectionsOpened = 0;
  private held = 0;
  private readonly loops: Promise<void>[] = [];
  private readonly clients = new Set<MilterClient>();
  private readonly message: ScriptEvent[];

  constructor(
    private readonly config: LoadConfig,
    private readonly hooks: DriverHooks,
  ) {
    this.message = messageEvents(config.mta, config, 1);
  }

  start(): void {
    const n = this.config.connections;
    const step = n > 1 ? this.config.rampMs / n : 0;
    for (let i = 0; i < n; i++) {
      this.loops.push(new Promise((r) => setTimeout(r, Math.floor(i * step))).then(() => this.slot()));
    }
    void Promise.all(this.loops).then(() => {
      if (!this.stopping) this.hooks.onLimit();
    });
  }

  mark(): void {
    this.marked = true;
    this.messages = 0;
    this.errors = 0;
    for (const h of this.latency) h.reset();
  }

  async stop(): Promise<WorkerStats> {
    this.stopping = true;
    const stats: WorkerStats = {
      messages: this.messages,
      errors: this.errors,
      warmupErrors: this.warmupErrors,
      errorSamples: this.errorSamples.slice(),
      latency: this.latency.map((h) => h.toData()),
      connectionsOpened: this.connectionsOpened,
      connectRetries: 0,
      held: this.held,
    };
    await Promise.race([Promise.all(this.loops), new Promise((r) => setTimeout(r, 2000))]);
    for (const c of this.clients) c.close();
    return stats;
  }

  private error(what: string): void {
    if (this.marked) this.errors++;
    else this.warmupErrors++;
    if (this.errorSamples.length < 20) this.errorSamples.push(what);
  }

  private async timed(stat: StatName, call: () => Promise<ClientReply>): Promise<void> {
    const t0 = performance.now();
    const reply = await call();
    if (reply.kind === 'noreply' || reply.kind === 'skipped') return;
    if (reply.kind !== 'continue') throw new Error(`${stat} answered ${reply.kind}`);
    this.latency[STAT_INDEX[stat]]!.record((performance.now() - t0) * 1e6);
  }

  /** One script event through the client: its macros, then its command (EOM is played by the caller). */
  private async play(c: MilterClient, e: ScriptEvent): Promise<void> {
    if (e.macro !== undefined) c.macro(stageOf(e.macro.stage), Object.fromEntries(e.macro.macros));
    const cmd: MilterCommand = e.command;
    switch (cmd.kind) {
      case 'connect':
        return this.timed(e.stat, () => c.connect(cmd));
      case 'helo':
        return this.timed(e.stat, () => c.helo(cmd.hostname));
      case 'mail':
        return this.timed(e.stat, () => c.envfrom(cmd.sender, cmd.args));
      case 'rcpt':
        return this.timed(e.stat, () => c.envrcpt(cmd.recipient, cmd.args));
      case 'data':
        return this.timed(e.stat, () => c.data());
      case 'header':
        return this.timed(e.stat, () => c.header(cmd.name, cmd.value));
      case 'eoh':
        return this.timed(e.stat, () => c.eoh());
      case 'body':
        return this.timed(e.stat, () => c.body(cmd.chunk));
      default:
        throw new Error(`client driver: no call for ${cmd.kind}`);
    }
  }

  private async slot(): Promise<void> {
    const unix = this.config.spec.startsWith('unix:') || this.config.spec.startsWith('/');
    while (!this.stopping && this.started < this.config.maxMessages) {
      let client: MilterClient | undefined;
      let inMessage = false;
      try {
        const t0 = performance.now();
        client = await MilterClient.connect(this.config.spec, {
          version: OFFER_VERSION,
          actions: OFFER_ACTIONS,
          protocol: OFFER_PROTOCOL,
          timeoutMs: this.config.timeoutMs,
        });
        this.connectionsOpened++;
        this.clients.add(client);
        this.latency[STAT_INDEX.optneg]!.record((performance.now() - t0) * 1e6);
        if ((client.negotiated.actions & SMFIF_ADDHDRS) === 0)
          throw new Error('filter did not ask for ADDHDRS');
        const c = client;
        for (const e of sessionEvents(this.config.mta, unix)) await this.play(c, e);
        if (this.config.idle) {
          this.held++;
          this.hooks.onHeld(this.held, this.errors + this.warmupErrors);
          while (!this.stopping) await new Promise((r) => setTimeout(r, 100));
          break;
        }
        for (let m = 0; m < this.config.messagesPerConnection; m++) {
          if (this.stopping || this.started >= this.config.maxMessages) break;
          this.started++;
          inMessage = true;
          const eomEvent = this.message[this.message.length - 1]!;
          for (const e of this.message) if (e !== eomEvent) await this.play(c, e);
          if (eomEvent.macro !== undefined) {
            c.macro(stageOf(eomEvent.macro.stage), Object.fromEntries(eomEvent.macro.macros));
          }
          const t0e = performance.now();
          const eom = await c.eom();
          if (eom.reply.kind !== 'continue') throw new Error(`EOM answered ${eom.reply.kind}`);
          const mods = eom.modifications;
          const first = mods[0];
          if (mods.length !== 1 || first?.kind !== 'addHeader' || first.name !== 'X-Bench') {
            throw new Error('EOM: expected exactly one ADDHEADER X-Bench');
          }
          this.latency[STAT_INDEX.eom]!.record((performance.now() - t0e) * 1e6);
          this.messages++;
          inMessage = false;
          if (this.config.mta === 'postfix') c.abort();
        }
        // Postfix also aborts at the end of the SMTP session, before QUIT.
        if (this.config.mta === 'postfix') c.abort();
        await c.quit();
      } catch (err) {
        if (!this.stopping || inMessage) this.error(err instanceof Error ? err.message : String(err));
        await new Promise((r) => setTimeout(r, 50));
      } finally {
        if (client) {
          this.clients.delete(client);
          client.close();
        }
      }
    }
  }
}

export function createClientDriver(config: LoadConfig, hooks: DriverHooks): Driver {
  return new ClientDriver(config, hooks);
}
