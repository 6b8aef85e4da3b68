// xform-proxy.mjs: the Node.js user-space baseline of the transform bench. A net server that pipes each
// client through a stream.Transform applying the op (Buffer.indexOf to find the patterns, in place on the
// chunk), then to the upstream; replies are piped back untouched. Half-close is kept (allowHalfOpen): the
// client's FIN reaches the server once the transform has flushed, and the reply still comes back.
// TCP_NODELAY on both sockets, as a proxy written with care does.
//
//   node xform-proxy.mjs --listen HOST:PORT --upstream HOST:PORT --op mask|replace|uppercase
//                        [--after S --until S --with C] [--from S --to S]
//
// Same defaults, same meaning and the same streaming rules as xform-proxy.c: patterns match across
// chunks, and only bytes whose output is not known yet are held back (a partial "until" while masking, a
// partial "from"). Prints "listening PORT" once it accepts (PORT 0 picks a free one).
// Also a module: createTransform(op) gives the Transform for an op in the StreamPath's shape.
import net from 'node:net';
import { Transform } from 'node:stream';
import { pathToFileURL } from 'node:url';

const EMPTY = Buffer.alloc(0);

/** Length of the longest suffix of buf[from, end) that is a proper prefix of pat. */
function partialSuffix(buf, from, end, pat) {
  const first = pat[0];
  for (let i = Math.max(from, end - (pat.length - 1)); i < end; i++) {
    i = buf.indexOf(first, i);
    if (i < 0 || i >= end) return 0;
    if (buf.compare(pat, 0, end - i, i, end) === 0) return end - i;
  }
  return 0;
}

/** A Transform that holds back a tail of each chunk (prepended to the next one) and flushes it at the end. */
class HoldBackTransform extends Transform {
  held = EMPTY;

  /** Transforms buf in place or into a new buffer; returns [output, bytes of buf held back]. */
  apply(_buf, _eof) {
    throw new Error('not implemented');
  }

  _transform(chunk, _encoding, callback) {
    const buf = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    const [out, held] = this.apply(buf, false);
    // The held bytes are copied: the chunk they came from is passed on and no longer ours.
    this.held = held ? Buffer.from(buf.subarray(buf.length - held)) : EMPTY;
    callback(null, out.length ? out : undefined);
  }

  _flush(callback) {
    const [out] = this.held.length ? this.apply(this.held, true) : [EMPTY];
    this.held = EMPTY;
    callback(null, out.length ? out : undefined);
  }
}

export class MaskTransform extends HoldBackTransform {
  masking = false;
  /** While not masking: the stream's last bytes that are a proper prefix of `after` (an `after` may straddle chunks). */
  partial = EMPTY;

  constructor(after, until, withByte) {
    super();
    this.after = after;
    this.until = until;
    this.with = withByte;
  }

  apply(buf, eof) {
    const { after, until } = this;
    const len = buf.length;
    let p = 0;
    while (p < len) {
      if (!this.masking) {
        let start = -1;
        if (this.partial.length) {
          // An `after` begun in an earlier chunk: the remembered partial and this chunk's first bytes.
          const tmp = Buffer.concat([this.partial, buf.subarray(p, p + Math.min(len - p, after.length - 1))]);
          const m = tmp.indexOf(after);
          if (m >= 0 && m < this.partial.length) start = p + m + after.length - this.partial.length;
        }
        if (start < 0) {
          const m = buf.indexOf(after, p);
          if (m < 0) {
            this.rememberPartial(buf, p, len);
            return [buf, 0];
          }
          start = m + after.length;
        }
        this.masking = true;
        this.partial = EMPTY;
        p = start;
        if (p >= len) break;
      }
      const u = buf.indexOf(until, p);
      if (u >= 0) {
        buf.fill(this.with, p, u);
        p = u + until.length;
        this.masking = false;
        continue;
      }
      const held = eof ? 0 : partialSuffix(buf, p, len, until);
      buf.fill(this.with, p, len - held);
      return [buf.subarray(0, len - held), held];
    }
    return [buf, 0];
  }

  rememberPartial(buf, from, end) {
    const region = end - from >= this.after.length - 1 ? buf.subarray(from, end) : Buffer.concat([this.partial, buf.subarray(from, end)]);
    const k = partialSuffix(region, 0, region.length, this.after);
    this.partial = k ? Buffer.from(region.subarray(region.length - k)) : EMPTY;
  }
}

export class ReplaceTransform extends HoldBackTransform {
  constructor(from, to) {
    super();
    this.from = from;
    this.to = to;
  }

  apply(buf, eof) {
    const { from, to } = this;
    const len = buf.length;
    let p = 0;
    let m = buf.indexOf(from, p);
    if (m < 0) {
      const held = eof ? 0 : partialSuffix(buf, 0, len, from);
      return [held ? buf.subarray(0, len - held) : buf, held];
    }
    if (from.length === to.length) {
      // In place, as the C proxy does.
      for (; m >= 0; m = buf.indexOf(from, p)) {
        to.copy(buf, m);
        p = m + from.length;
      }
      const held = eof ? 0 : partialSuffix(buf, p, len, from);
      return [held ? buf.subarray(0, len - held) : buf, held];
    }
    const parts = [];
    for (; m >= 0; m = buf.indexOf(from, p)) {
      parts.push(buf.subarray(p, m), to);
      p = m + from.length;
    }
    const held = eof ? 0 : partialSuffix(buf, p, len, from);
    parts.push(buf.subarray(p, len - held));
    return [Buffer.concat(parts), held];
  }
}

export class ByteMapTransform extends Transform {
  constructor(table) {
    super();
    this.table = table;
  }

  _transform(chunk, _encoding, callback) {
    const t = this.table;
    for (let i = 0; i < chunk.length; i++) chunk[i] = t[chunk[i]];
    callback(null, chunk);
  }
}

function utf8(s, what) {
  const b = Buffer.from(s, 'utf8');
  if (b.length === 0) throw new Error(`${what} must not be empty`);
  return b;
}

/** A byteMap byte as the StreamPath writes it: one ASCII character, or 0xNN. */
function byteOf(s, what) {
  if (/^[\x00-\x7F]$/.test(s)) return s.charCodeAt(0);
  if (/^0x[0-9A-Fa-f]{2}$/.test(s)) return parseInt(s.slice(2), 16);
  throw new Error(`${what} must be one ASCII character or 0xNN, got ${JSON.stringify(s)}`);
}

/** The Transform for one op in the StreamPath's shape ({mask}, {replace} or {byteMap}). */
export function createTransform(op) {
  if (op.mask) {
    const w = Buffer.from(op.mask.with ?? '*', 'utf8');
    if (w.length !== 1) throw new Error('mask.with must be one byte');
    return new MaskTransform(utf8(op.mask.after, 'mask.after'), utf8(op.mask.until, 'mask.until'), w[0]);
  }
  if (op.replace) return new ReplaceTransform(utf8(op.replace.from, 'replace.from'), Buffer.from(op.replace.to, 'utf8'));
  if (op.byteMap) {
    const t = new Uint8Array(256);
    for (let i = 0; i < 256; i++) t[i] = i;
    if (op.byteMap.preset === 'uppercase') for (let c = 0x61; c <= 0x7a; c++) t[c] = c - 32;
    if (op.byteMap.preset === 'lowercase') for (let c = 0x41; c <= 0x5a; c++) t[c] = c + 32;
    for (const [k, v] of Object.entries(op.byteMap.pairs ?? {})) t[byteOf(k, 'byteMap key')] = byteOf(v, 'byteMap value');
    return new ByteMapTransform(t);
  }
  throw new Error(`unknown op ${JSON.stringify(op)}`);
}

function hostPort(s) {
  const i = s.lastIndexOf(':');
  if (i < 0) throw new Error(`not HOST:PORT: ${s}`);
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

function main(argv) {
  const flags = { after: 'Authorization: ', until: '\r\n', with: '*', from: 'prod-db-1', to: 'stag-db-1' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    if (!k?.startsWith('--') || argv[i + 1] === undefined) usage();
    flags[k.slice(2)] = argv[i + 1];
  }
  if (!flags.listen || !flags.upstream || !flags.op) usage();
  const ops = {
    mask: { mask: { after: flags.after, until: flags.until, with: flags.with } },
    replace: { replace: { from: flags.from, to: flags.to } },
    uppercase: { byteMap: { preset: 'uppercase' } },
  };
  const op = ops[flags.op];
  if (!op) usage();
  createTransform(op); // the op's arguments are checked before listening
  const listen = hostPort(flags.listen);
  const upstream = hostPort(flags.upstream);

  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    const up = net.connect({ ...upstream, allowHalfOpen: true, noDelay: true });
    const transform = createTransform(op);
    const fail = () => {
      client.destroy();
      up.destroy();
      transform.destroy();
    };
    client.on('error', fail);
    up.on('error', fail);
    transform.on('error', fail);
    // Each pipe ends its writable side after its source's end: a socket closes once both ways ended.
    client.pipe(transform).pipe(up);
    up.pipe(client);
  });
  server.on('error', (err) => {
    process.stderr.write(`xform-proxy.mjs: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(listen.port, listen.host, () => {
    process.stdout.write(`listening ${server.address().port}\n`);
  });
  process.on('SIGTERM', () => process.exit(0));
}

function usage() {
  process.stderr.write(
    'usage: node xform-proxy.mjs --listen HOST:PORT --upstream HOST:PORT --op mask|replace|uppercase\n' +
      '                            [--after S] [--until S] [--with C] [--from S] [--to S]\n',
  );
  process.exit(2);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main(process.argv.slice(2));
