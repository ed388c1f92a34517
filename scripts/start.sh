#!/bin/sh
# `npm start` after the build: run the daemon as npm's direct child, in its own session.
#
# npm runs a script with `sh -c` and forwards SIGINT and SIGTERM to that child's pid only
# (@npmcli/run-script, signal-manager.js), so:
#   * `exec` makes the daemon that child: `kill -TERM <npm>` reaches it (without exec, sh died and the
#     daemon was left behind, re-parented to init);
#   * `setsid` keeps it out of the terminal's process group: Ctrl-C signals npm's group, npm forwards it,
#     and the daemon sees it once. In npm's group it would see it twice (terminal + npm), and a second
#     stop signal means "exit now, skip the drain".
# setsid (util-linux) execs without forking here (sh is never a process-group leader under npm); `-w`
# only matters if it ever had to fork. Without setsid (macOS) Ctrl-C exits at once instead of draining;
# signals sent to npm's pid are forwarded either way.
if command -v setsid >/dev/null 2>&1; then
  exec setsid -w node bin/milterd.js serve "$@"
fi
exec node bin/milterd.js serve "$@"
