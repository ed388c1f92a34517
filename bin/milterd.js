#!/usr/bin/env node
// Thin shim: check the Node version, then hand over to the CLI.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 20 || (major === 20 && minor < 19)) {
  console.error(`milterd needs Node.js >= 20.19 (this is ${process.versions.node})`);
  process.exit(1);
}
await import('../dist/src/cli/main.js');
