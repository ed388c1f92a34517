/** Start a milterd server for a test and register its cleanup right away. */
import type { TestContext } from 'node:test';
import {
  createMilterServer,
  type ListenAddress,
  type MilterServer,
  type MilterServerOptions,
} from '../../src/server/server.js';
import type { SocketSpec } from '../../src/socket-spec.js';

/** A started server and its first address. */
export interface StartedServer {
  server: MilterServer;
  address: ListenAddress;
}

/**
 * Create a server, register `t.after(close)` before anything can fail, then listen on `spec`
 * (default: an ephemeral port on 127.0.0.1).
 */
export async function startServer<P>(
  t: TestContext,
  options: MilterServerOptions<P>,
  spec: string | SocketSpec = 'inet:0@127.0.0.1',
): Promise<StartedServer> {
  const server = createMilterServer(options);
  t.after(() => server.close({ deadlineMs: 100 }));
  const address = await server.listen(spec);
  return { server, address };
}
