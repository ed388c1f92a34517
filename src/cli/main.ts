/**
 * Entry point of the `milterd` binary (`bin/milterd.js` imports it): run the command line on
 * `process.argv` and exit with its code. Nothing else in milterd calls `process.exit`.
 */
import { runCli } from './program.js';

// `milterd test … | head`: a closed pipe ends the command quietly instead of crashing with a stack.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => process.exit(err.code === 'EPIPE' ? 0 : 1));
}

const code = await runCli(process.argv, {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
});
// Flush stdout/stderr (pipes are asynchronous) before leaving; the daemon's handles are closed by now.
process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
