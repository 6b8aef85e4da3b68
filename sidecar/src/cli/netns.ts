// --netns takes what `ip netns` users type (a name under /run/netns) or any namespace file path.
import { existsSync } from 'node:fs';
import { CliError, EXIT } from './errors.js';

export function netnsPathOf(arg: string): string {
  return arg.includes('/') ? arg : `/run/netns/${arg}`;
}

export function resolveNetns(arg: string): string {
  const path = netnsPathOf(arg);
  if (!existsSync(path)) {
    const hint = arg.includes('/')
      ? 'give a namespace file such as /proc/PID/ns/net or /run/netns/NAME'
      : `create it (ip netns add ${arg}), list existing ones with \`ip netns list\`, or give a path such as /proc/PID/ns/net`;
    throw new CliError(EXIT.netns, `network namespace ${arg} not found (${path}); ${hint}`);
  }
  return path;
}
