// Invalid StreamPaths and the field each error must name. One table drives the zod unit test and the
// test that applies each to a real apiserver with kubectl, so the CRD and the schema cannot drift apart.

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
}

export function validSpec(): Record<string, any> {
  return {
    selector: { matchLabels: { app: 'checkout' } },
    port: 8080,
    mirror: { targets: [{ address: '10.0.0.2:8080' }], sampling: { percent: 10 } },
  };
}

const target0 = (spec: Record<string, any>) => spec['mirror'].targets[0] as Record<string, any>;

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
  { name: 'mirror missing', mutate: (s) => delete s['mirror'], mentions: /spec\.mirror/, kubectlMentions: /StreamPath\.spec\): missing required field "mirror"/ },
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
  {
    name: 'mask with more than one character',
    mutate: (s) => (s['transform'] = { ops: [{ mask: { after: 'Authorization: ', until: '\r\n', with: '**' } }] }),
    mentions: /spec\.transform\.ops\[0\]\.mask\.with/,
  },
  {
    name: 'replace of an empty token',
    mutate: (s) => (s['transform'] = { ops: [{ replace: { from: '', to: 'b' } }] }),
    mentions: /spec\.transform\.ops\[0\]\.replace\.from/,
  },
  { name: 'unknown field in spec', mutate: (s) => (s['bogus'] = 1), mentions: /bogus/, serverRejects: false },
  { name: 'unknown field in a target', mutate: (s) => (target0(s)['weight'] = 3), mentions: /weight/, serverRejects: false },
];
