// Invalid StreamPaths and the field each error must name. One table drives the zod unit test, the tests
// that apply each to a real apiserver (kubectl apply and a direct API create) and the `kstreams validate`
// test, so the CRD, the schema and the CLI cannot drift apart.

export interface InvalidCase {
  name: string;
  /** Changes a valid spec into the invalid one. */
  mutate: (spec: Record<string, any>) => void;
  /** What the error message must mention: the field's path (or the unknown key). */
  mentions: RegExp;
  /** Where kubectl words it differently from zod (e.g. client-side schema validation). */
  kubectlMentions?: RegExp;
  /**
   * false when the apiserver alone would accept the object: it prunes unknown fields, so only kubectl's
   * schema validation (and zod in the CLI) reject them.
   */
  serverRejects?: boolean;
  /**
   * true when the CRD cannot state the rule (a cross-field rule, a record key, a length in UTF-8 bytes):
   * kubectl and the apiserver accept and store the object, and zod refuses it: `kstreams validate`/`run`, the
   * agent, and the operator, whose status condition (Degraded, reason InvalidSpec) names the field.
   */
  zodOnly?: true;
}

export function validSpec(): Record<string, any> {
  return {
    selector: { matchLabels: { app: 'checkout' } },
    port: 8080,
    mirror: { targets: [{ address: '10.0.0.2:8080' }], sampling: { percent: 10 } },
  };
}

const target0 = (spec: Record<string, any>) => spec['mirror'].targets[0] as Record<string, any>;
/** Gives the spec a transform of the mirror with these ops. */
const ops = (...list: unknown[]) => (s: Record<string, any>) => (s['transform'] = { ops: list });
const program = { program: { configMap: 'bpf-programs', key: 'mask.o' } };
const mask = { mask: { after: 'password=', until: '&' } };

export const INVALID_CASES: InvalidCase[] = [
  { name: 'port 0', mutate: (s) => (s['port'] = 0), mentions: /spec\.port/ },
  { name: 'port above 65535', mutate: (s) => (s['port'] = 70000), mentions: /spec\.port/ },
  { name: 'port as a name', mutate: (s) => (s['port'] = 'http'), mentions: /spec\.port/ },
  { name: 'port missing', mutate: (s) => delete s['port'], mentions: /spec\.port/, kubectlMentions: /StreamPath\.spec\): missing required field "port"/ },
  { name: 'selector missing', mutate: (s) => delete s['selector'], mentions: /spec\.selector/, kubectlMentions: /StreamPath\.spec\): missing required field "selector"/ },
  {
    name: 'selector with an unknown operator',
    mutate: (s) => (s['selector'] = { matchExpressions: [{ key: 'app', operator: 'Like', values: ['x'] }] }),
    mentions: /spec\.selector\.matchExpressions\[0\]\.operator/,
  },
  {
    name: 'selector label value with spaces',
    mutate: (s) => (s['selector'] = { matchLabels: { app: 'check out' } }),
    mentions: /spec\.selector\.matchLabels\.app/,
  },
  { name: 'mirror missing', mutate: (s) => delete s['mirror'], mentions: /spec\.mirror/ },
  {
    name: 'mirror missing with a transform of the mirror (applyTo defaults to mirror)',
    mutate: (s) => {
      delete s['mirror'];
      s['transform'] = { ops: [{ replace: { from: 'prod', to: 'stag' } }] };
    },
    mentions: /spec\.mirror/,
    zodOnly: true,
  },
  {
    name: 'mirror missing with applyTo both',
    mutate: (s) => {
      delete s['mirror'];
      s['transform'] = { applyTo: 'both', ops: [{ replace: { from: 'prod', to: 'stag' } }] };
    },
    mentions: /spec\.mirror/,
    zodOnly: true,
  },
  { name: 'empty targets', mutate: (s) => (s['mirror'].targets = []), mentions: /spec\.mirror\.targets/ },
  {
    name: 'more than 16 targets',
    mutate: (s) => (s['mirror'].targets = Array.from({ length: 17 }, (_, i) => ({ address: `10.0.0.${i + 1}:80` }))),
    mentions: /spec\.mirror\.targets/,
  },
  {
    name: 'target with both address and service',
    mutate: (s) => (target0(s)['service'] = { name: 'staging', port: 80 }),
    mentions: /spec\.mirror\.targets\[0\]/,
  },
  { name: 'target with neither address nor service', mutate: (s) => (s['mirror'].targets = [{ name: 'x' }]), mentions: /spec\.mirror\.targets\[0\]/ },
  {
    name: 'target with both address and file',
    mutate: (s) => (target0(s)['file'] = { path: '/var/lib/kstreams/capture' }),
    mentions: /spec\.mirror\.targets\[0\]/,
  },
  {
    name: 'compareResponses on a file target',
    mutate: (s) => (s['mirror'].targets = [{ file: { path: '/captures' }, compareResponses: true }]),
    mentions: /spec\.mirror\.targets\[0\]\.compareResponses/,
    zodOnly: true,
  },
  {
    name: 'file target with a relative path',
    mutate: (s) => (s['mirror'].targets = [{ file: { path: 'captures' } }]),
    mentions: /spec\.mirror\.targets\[0\]\.file\.path/,
  },
  {
    name: 'file target with maxBytes 0',
    mutate: (s) => (s['mirror'].targets = [{ file: { path: '/captures', maxBytes: 0 } }]),
    mentions: /spec\.mirror\.targets\[0\]\.file\.maxBytes/,
  },
  {
    name: 'file target without a path',
    mutate: (s) => (s['mirror'].targets = [{ file: { responses: true } }]),
    mentions: /spec\.mirror\.targets\[0\]\.file\.path/,
    kubectlMentions: /missing required field "path"/,
  },
  { name: 'address without a port', mutate: (s) => (target0(s)['address'] = 'staging'), mentions: /spec\.mirror\.targets\[0\]\.address/ },
  { name: 'address with port 0', mutate: (s) => (target0(s)['address'] = 'staging:0'), mentions: /spec\.mirror\.targets\[0\]\.address/ },
  {
    name: 'service without a port',
    mutate: (s) => (s['mirror'].targets = [{ service: { name: 'staging' } }]),
    mentions: /spec\.mirror\.targets\[0\]\.service\.port/,
    kubectlMentions: /spec\.mirror\.targets\[0\]\.service\): missing required field "port"/,
  },
  {
    name: 'service name not a DNS label',
    mutate: (s) => (s['mirror'].targets = [{ service: { name: 'Bad_Name', port: 80 } }]),
    mentions: /spec\.mirror\.targets\[0\]\.service\.name/,
  },
  { name: 'sampling percent above 100', mutate: (s) => (s['mirror'].sampling.percent = 101), mentions: /spec\.mirror\.sampling\.percent/ },
  { name: 'sampling percent negative', mutate: (s) => (s['mirror'].sampling.percent = -1), mentions: /spec\.mirror\.sampling\.percent/ },
  { name: 'unknown onOverflow', mutate: (s) => (s['mirror'].onOverflow = 'block'), mentions: /spec\.mirror\.onOverflow/ },
  { name: 'pipe size too small', mutate: (s) => (s['mirror'].pipeSize = 100), mentions: /spec\.mirror\.pipeSize/ },
  { name: 'pipe size above fs.pipe-max-size', mutate: (s) => (s['mirror'].pipeSize = 4 * 1024 * 1024), mentions: /spec\.mirror\.pipeSize/ },
  { name: 'turn timeout negative', mutate: (s) => (s['mirror'].turnTimeoutMs = -1), mentions: /spec\.mirror\.turnTimeoutMs/ },
  { name: 'turn timeout above 60 s', mutate: (s) => (s['mirror'].turnTimeoutMs = 60_001), mentions: /spec\.mirror\.turnTimeoutMs/ },
  { name: 'turn timeout not a whole number', mutate: (s) => (s['mirror'].turnTimeoutMs = 2.5), mentions: /spec\.mirror\.turnTimeoutMs/ },
  { name: 'mirror buffer below 64 KiB', mutate: (s) => (s['mirror'].bufferSize = 65_535), mentions: /spec\.mirror\.bufferSize/ },
  { name: 'mirror buffer above 64 MiB', mutate: (s) => (s['mirror'].bufferSize = 64 * 1024 * 1024 + 1), mentions: /spec\.mirror\.bufferSize/ },
  { name: 'mirror buffer as a quantity string', mutate: (s) => (s['mirror'].bufferSize = '4Mi'), mentions: /spec\.mirror\.bufferSize/ },
  { name: 'drain timeout negative', mutate: (s) => (s['drainTimeoutSeconds'] = -1), mentions: /spec\.drainTimeoutSeconds/ },
  { name: 'drain timeout above an hour', mutate: (s) => (s['drainTimeoutSeconds'] = 3601), mentions: /spec\.drainTimeoutSeconds/ },
  {
    name: 'unknown transform op',
    mutate: (s) => (s['transform'] = { ops: [{ uppercase: {} }] }),
    mentions: /spec\.transform\.ops\[0\]/,
    kubectlMentions: /spec\.transform\.ops(\[0\])?|"uppercase"/,
  },
  {
    name: 'two ops in one list item',
    mutate: (s) => (s['transform'] = { ops: [{ replace: { from: 'a', to: 'b' }, mask: { after: 'x', until: 'y' } }] }),
    mentions: /spec\.transform\.ops\[0\]/,
  },
  {
    name: 'unknown applyTo',
    mutate: (s) => (s['transform'] = { applyTo: 'sideways', ops: [{ replace: { from: 'a', to: 'b' } }] }),
    mentions: /spec\.transform\.applyTo/,
  },
  { name: 'transform without ops', mutate: ops(), mentions: /spec\.transform\.ops/ },
  { name: 'transform with 33 ops', mutate: ops(...Array.from({ length: 33 }, () => mask)), mentions: /spec\.transform\.ops/ },
  { name: 'an empty op', mutate: ops({}), mentions: /spec\.transform\.ops\[0\]/ },
  { name: 'mask with an empty after', mutate: ops({ mask: { after: '', until: '&' } }), mentions: /spec\.transform\.ops\[0\]\.mask\.after/ },
  { name: 'mask with an empty until', mutate: ops({ mask: { after: 'password=', until: '' } }), mentions: /spec\.transform\.ops\[0\]\.mask\.until/ },
  {
    name: 'mask without until',
    mutate: ops({ mask: { after: 'password=' } }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.until/,
    kubectlMentions: /spec\.transform\.ops\[0\]\.mask\): missing required field "until"/,
  },
  { name: 'mask after of 257 ASCII bytes', mutate: ops({ mask: { after: 'a'.repeat(257), until: '&' } }), mentions: /spec\.transform\.ops\[0\]\.mask\.after/ },
  {
    // 129 characters, 258 bytes: the CRD bounds characters, zod the bytes.
    name: 'mask until over 256 bytes in UTF-8 but under 256 characters',
    mutate: ops({ mask: { after: 'password=', until: 'é'.repeat(129) } }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.until/,
    zodOnly: true,
  },
  {
    name: 'mask with more than one character',
    mutate: (s) => (s['transform'] = { ops: [{ mask: { after: 'Authorization: ', until: '\r\n', with: '**' } }] }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.with/,
  },
  { name: 'mask with a non-ASCII character', mutate: ops({ mask: { after: 'password=', until: '&', with: 'é' } }), mentions: /spec\.transform\.ops\[0\]\.mask\.with/ },
  {
    name: 'mask with a byte that occurs in until',
    mutate: ops({ mask: { after: 'password=', until: '&x', with: 'x' } }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.with/,
    zodOnly: true,
  },
  {
    // The default "*" counts too.
    name: 'mask until containing the default *',
    mutate: ops({ mask: { after: '/*', until: '*/' } }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.with/,
    zodOnly: true,
  },
  {
    name: 'replace of an empty token',
    mutate: (s) => (s['transform'] = { ops: [{ replace: { from: '', to: 'b' } }] }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.from/,
  },
  {
    name: 'replace without to',
    mutate: ops({ replace: { from: 'prod' } }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.to/,
    kubectlMentions: /spec\.transform\.ops\[0\]\.replace\): missing required field "to"/,
  },
  {
    // 100 characters, 300 bytes.
    name: 'replace from over 256 bytes in UTF-8 but under 256 characters',
    mutate: ops({ replace: { from: '€'.repeat(100), to: 'EUR' } }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.from/,
    zodOnly: true,
  },
  {
    // 65 emoji: 65 code points, 130 UTF-16 units, 260 bytes.
    name: 'replace to over 256 bytes in UTF-8 (astral characters)',
    mutate: ops({ replace: { from: 'ok', to: '😀'.repeat(65) } }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.to/,
    zodOnly: true,
  },
  {
    // The CRD's replace.to is nullable, so that Kubernetes 1.20 takes an empty to (see crd.ts).
    name: 'replace to null',
    mutate: ops({ replace: { from: 'ok', to: null } }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.to/,
    zodOnly: true,
  },
  { name: 'replace to of 257 ASCII bytes', mutate: ops({ replace: { from: 'ok', to: 'k'.repeat(257) } }), mentions: /spec\.transform\.ops\[0\]\.replace\.to/ },
  { name: 'byteMap with neither preset nor pairs', mutate: ops({ byteMap: {} }), mentions: /spec\.transform\.ops\[0\]\.byteMap/ },
  { name: 'byteMap with empty pairs', mutate: ops({ byteMap: { pairs: {} } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs/ },
  { name: 'unknown byteMap preset', mutate: ops({ byteMap: { preset: 'titlecase' } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.preset/ },
  {
    name: 'byteMap pair key of two characters',
    mutate: ops({ byteMap: { pairs: { ab: 'x' } } }),
    mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.ab/,
    zodOnly: true,
  },
  { name: 'byteMap pair value of two characters', mutate: ops({ byteMap: { pairs: { a: 'xy' } } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.a/ },
  { name: 'byteMap pair value with bad hex 0xG1', mutate: ops({ byteMap: { pairs: { a: '0xG1' } } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.a/ },
  {
    name: 'byteMap pair key with bad hex 0xG1',
    mutate: ops({ byteMap: { pairs: { '0xG1': 'a' } } }),
    mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.0xG1/,
    zodOnly: true,
  },
  { name: 'byteMap pair value with three hex digits', mutate: ops({ byteMap: { pairs: { a: '0x041' } } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.a/ },
  { name: 'byteMap pair value of a non-ASCII character', mutate: ops({ byteMap: { pairs: { e: 'é' } } }), mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs\.e/ },
  {
    name: 'byteMap mapping one byte twice (A and 0x41)',
    mutate: ops({ byteMap: { pairs: { A: 'a', '0x41': 'b' } } }),
    mentions: /spec\.transform\.ops\[0\]\.byteMap\.pairs: "(A|0x41)" and "(A|0x41)" are the same byte/,
    zodOnly: true,
  },
  {
    // The CRD has no path (kstreams run only): kubectl refuses it as unknown, the apiserver prunes it.
    name: 'program with both configMap and path',
    mutate: ops({ program: { configMap: 'bpf-programs', key: 'mask.o', path: '/opt/bpf/mask.o' } }),
    mentions: /spec\.transform\.ops\[0\]\.program/,
    kubectlMentions: /unknown field "path"/,
    serverRejects: false,
  },
  {
    name: 'program with neither configMap nor path',
    mutate: ops({ program: { section: 'sk_msg' } }),
    mentions: /spec\.transform\.ops\[0\]\.program/,
    kubectlMentions: /spec\.transform\.ops\[0\]\.program\): missing required field "configMap"/,
  },
  {
    name: 'program with configMap but no key',
    mutate: ops({ program: { configMap: 'bpf-programs' } }),
    mentions: /spec\.transform\.ops\[0\]\.program\.key/,
    kubectlMentions: /spec\.transform\.ops\[0\]\.program\): missing required field "key"/,
  },
  {
    name: 'program ConfigMap name not a DNS subdomain',
    mutate: ops({ program: { configMap: 'BPF_Programs', key: 'mask.o' } }),
    mentions: /spec\.transform\.ops\[0\]\.program\.configMap/,
  },
  {
    name: 'program section with a space',
    mutate: ops({ program: { configMap: 'bpf-programs', key: 'mask.o', section: 'sk msg' } }),
    mentions: /spec\.transform\.ops\[0\]\.program\.section/,
  },
  { name: 'program not the last op', mutate: ops(program, mask), mentions: /spec\.transform\.ops\[0\]\.program/, zodOnly: true },
  { name: 'two program ops', mutate: ops(mask, program, program), mentions: /spec\.transform\.ops\[2\]\.program/, zodOnly: true },
  { name: 'unknown field in spec', mutate: (s) => (s['bogus'] = 1), mentions: /bogus/, serverRejects: false },
  { name: 'unknown field in a target', mutate: (s) => (target0(s)['weight'] = 3), mentions: /weight/, serverRejects: false },
];

export interface ValidCase {
  name: string;
  /** Changes the valid base spec into another valid one, at an edge of the rules. */
  mutate: (spec: Record<string, any>) => void;
}

/** StreamPaths at the edges of the rules, which zod, kubectl and the apiserver must all accept. */
export const VALID_CASES: ValidCase[] = [
  {
    name: 'a transform of the primary without a mirror',
    mutate: (s) => {
      delete s['mirror'];
      s['transform'] = { applyTo: 'primary', ops: [{ replace: { from: 'prod-db-1', to: 'stag-db-1' } }] };
    },
  },
  { name: 'a transform of the primary beside an untransformed mirror', mutate: (s) => (s['transform'] = { applyTo: 'primary', ops: [mask] }) },
  { name: 'a transform of both', mutate: (s) => (s['transform'] = { applyTo: 'both', ops: [mask] }) },
  { name: '32 ops ending in a program', mutate: ops(...Array.from({ length: 31 }, () => mask), program) },
  { name: 'patterns of 256 ASCII bytes', mutate: ops({ replace: { from: 'f'.repeat(256), to: 't'.repeat(256) } }) },
  // 128 two-byte characters and 64 four-byte ones: exactly 256 bytes each.
  { name: 'patterns of exactly 256 bytes in UTF-8', mutate: ops({ mask: { after: 'é'.repeat(128), until: '😀'.repeat(64) } }) },
  { name: 'a replace that deletes', mutate: ops({ replace: { from: 'X-Debug: 1\r\n', to: '' } }) },
  { name: 'a mask with another byte and a control character until', mutate: ops({ mask: { after: 'Authorization: ', until: '\r\n', with: '#' } }) },
  { name: 'a byteMap preset alone', mutate: ops({ byteMap: { preset: 'uppercase' } }) },
  {
    name: 'a byteMap of hex pairs over a preset (EBCDIC-style)',
    mutate: ops({ byteMap: { preset: 'lowercase', pairs: { '0xC1': 'A', '0x81': 'a', '0x40': ' ', A: '0xff', '0x00': '0x0A' } } }),
  },
  { name: 'compareResponses on an address target', mutate: (s) => (target0(s)['compareResponses'] = true) },
  {
    name: 'a file target (a capture) beside an address, with responses and both bounds',
    mutate: (s) =>
      s['mirror'].targets.push({ name: 'capture', file: { path: '/var/lib/kstreams/capture', responses: true, maxBytes: 1 << 30, maxConnectionBytes: 1 << 20 } }),
  },
  { name: 'a program with a section', mutate: ops(mask, { program: { configMap: 'bpf.programs', key: 'mask_v2.o', section: 'sk_msg/mask' } }) },
];
