// Human-readable counters for a terminal, and the JSON shapes written to stdout.
import type { AttachmentCounters, DetachResult } from '../dataplane/attach.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/** 20000 -> '20s', 500 -> '0.5s', 90000 -> '90s': a drain timeout as the user gave it. */
export function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10}s`;
}

export interface LiveHeader {
  name: string;
  port: number;
  netns: string;
  startedAt: number;
}

/** The block redrawn on stderr about once a second. */
export function renderLive(h: LiveHeader, c: AttachmentCounters, now: number): string[] {
  const extra = [
    c.appConnectFailures ? `${c.appConnectFailures} refused by the app` : '',
    c.setupFailures ? `${c.setupFailures} reset for want of fds or memory` : '',
    c.connectionsReset ? `${c.connectionsReset} reset at detach` : '',
  ].filter(Boolean);
  const m = c.memory;
  const lines = [
    `kstreams: ${h.name} on port ${h.port} in ${h.netns}, up ${formatDuration(now - h.startedAt)} (Ctrl-C to drain and stop)`,
    `  connections ${c.connections} (${[`${c.connectionsActive} open`, ...extra].join(', ')})   primary ${formatBytes(c.bytesPrimary)}   mirrored ${formatBytes(c.bytesMirrored)}   dropped ${formatBytes(c.bytesDropped)}`,
    `  memory: ${m.pipesInUse} pipes in use (${formatBytes(m.pipeBytesInUse)}), ${m.pipesPooled} pooled (${formatBytes(m.pipeBytesPooled)}); mirror buffers ${formatBytes(m.mirrorBufferInUse)} of ${formatBytes(m.mirrorBufferBudget)}${m.mirrorBufferDenied ? `, ${m.mirrorBufferDenied} grows denied` : ''}`,
  ];
  for (const t of c.targets) {
    lines.push(
      `  -> ${t.name}: ${t.connectionsMirrored} conns, ${formatBytes(t.bytesMirrored)} mirrored, ${t.connectionsCut} cut, ${t.connectFailures} connect failures${t.connectionsSkipped ? `, ${t.connectionsSkipped} skipped (pipe budget)` : ''}, ${t.turnWaitsExpired ?? 0} turn waits expired, ${formatBytes(t.bytesDropped)} dropped${t.responsesCompared !== undefined ? `, answers compared ${t.responsesCompared}, diverged ${t.responsesDiverged ?? 0}` : ''}`,
    );
  }
  return lines;
}

/** Redraws a block of lines in place on a terminal stream. */
export class LiveBlock {
  private drawn = 0;

  constructor(private readonly out: NodeJS.WriteStream) {}

  draw(lines: string[]): void {
    const width = this.out.columns || 120;
    const clipped = lines.map((l) => (l.length > width - 1 ? `${l.slice(0, width - 2)}…` : l));
    const up = this.drawn ? `\x1b[${this.drawn}A\r\x1b[J` : '';
    this.out.write(`${up}${clipped.join('\n')}\n`);
    this.drawn = clipped.length;
  }

  clear(): void {
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A\r\x1b[J`);
    this.drawn = 0;
  }
}

export interface Summary extends AttachmentCounters {
  type: 'summary';
  streamPath: string;
  port: number;
  netns: string;
  startedAt: string;
  stoppedAt: string;
  seconds: number;
  /** How the detach's drain ended; absent when the detach failed. */
  drain?: DetachResult;
}
