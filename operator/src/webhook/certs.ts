// Self-managed webhook PKI: a CA and a serving certificate, minted in-process with WebCrypto (ECDSA P-256)
// and @peculiar/x509, and the pure decision of when to re-issue them. Clocks are passed in.
import 'reflect-metadata'; // @peculiar/x509 resolves its ASN.1 providers through tsyringe, which needs it.
import * as x509 from '@peculiar/x509';
import { X509Certificate as NodeX509, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
import { isIP } from 'node:net';

// Passed explicitly rather than set globally through x509.cryptoProvider (no module-level singletons).
const provider = webcrypto as unknown as NonNullable<Parameters<typeof x509.X509CertificateGenerator.create>[1]>;
const subtle = webcrypto.subtle;
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/** notBefore is set this far back, so that an apiserver whose clock lags a little accepts a fresh cert. */
export const CLOCK_SKEW_MS = 5 * 60 * 1000;

export interface CertKeyPem {
  certPem: string;
  keyPem: string;
}

/** What the TLS Secret holds. */
export interface TlsBundle {
  ca: CertKeyPem;
  serving: CertKeyPem;
  /** The CA before the last CA rotation, trusted until it expires so replicas still serving a cert it
   *  signed keep being accepted while they reload. */
  previousCaPem?: string;
  /** The CA that replaces `ca` at the next CA rotation, staged first: it is put into the caBundle, and
   *  only once that is published (and had time to reach every apiserver) does any replica serve a cert it
   *  signed. Absent outside a CA rotation. */
  nextCa?: CertKeyPem;
}

export const SECRET_KEYS = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  cert: 'tls.crt',
  key: 'tls.key',
  previousCaCert: 'ca-previous.crt',
  nextCaCert: 'ca-next.crt',
  nextCaKey: 'ca-next.key',
} as const;

/** On the Secret: `<sha256 fingerprint of ca-next.crt>@<RFC 3339 time>`, written once a caBundle holding
 *  ca-next.crt was accepted by the apiserver. The CA is promoted caPropagationSeconds after that time. */
export const NEXT_CA_PUBLISHED_ANNOTATION = 'kstreams.io/ca-next-published';

function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f; // positive INTEGER
  return b.toString('hex');
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function importKeyPem(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block in private key');
  return subtle.importKey('pkcs8', der, ALG, false, ['sign']);
}

export async function createCA(opts: { commonName: string; nowMs: number; validitySeconds: number }): Promise<CertKeyPem> {
  const keys = await subtle.generateKey(ALG, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serial(),
      name: `CN=${opts.commonName}`,
      notBefore: new Date(opts.nowMs - CLOCK_SKEW_MS),
      notAfter: new Date(opts.nowMs + opts.validitySeconds * 1000),
      keys,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, provider),
      ],
    },
    provider,
  );
  return { certPem: cert.toString('pem'), keyPem: await exportKeyPem(keys.privateKey) };
}

/** Splits SANs into DNS names and IP addresses. */
export function splitSANs(names: readonly string[]): { dns: string[]; ips: string[] } {
  const dns: string[] = [];
  const ips: string[] = [];
  for (const n of names) (isIP(n) ? ips : dns).push(n);
  return { dns, ips };
}

export async function issueServingCert(opts: {
  ca: CertKeyPem;
  sans: readonly string[];
  nowMs: number;
  validitySeconds: number;
}): Promise<CertKeyPem> {
  const caCert = new x509.X509Certificate(opts.ca.certPem);
  const caKey = await importKeyPem(opts.ca.keyPem);
  const keys = await subtle.generateKey(ALG, true, ['sign', 'verify']);
  const { dns, ips } = splitSANs(opts.sans);
  // Never outlive the CA: a leaf valid beyond its issuer is rejected anyway.
  const notAfter = Math.min(opts.nowMs + opts.validitySeconds * 1000, caCert.notAfter.getTime());
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial(),
      subject: `CN=${dns[0] ?? ips[0] ?? 'kstreams-webhook'}`,
      issuer: caCert.subject,
      notBefore: new Date(opts.nowMs - CLOCK_SKEW_MS),
      notAfter: new Date(notAfter),
      publicKey: keys.publicKey,
      signingKey: caKey,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(
          [...dns.map((value) => ({ type: 'dns' as const, value })), ...ips.map((value) => ({ type: 'ip' as const, value }))],
          false,
        ),
        await x509.AuthorityKeyIdentifierExtension.create(caCert, false, provider),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, provider),
      ],
    },
    provider,
  );
  return { certPem: cert.toString('pem'), keyPem: await exportKeyPem(keys.privateKey) };
}

/** The DNS names the apiserver uses to reach the Service, plus configured extras. */
export function servingSANs(serviceName: string, namespace: string, extra: readonly string[] = []): string[] {
  const base = `${serviceName}.${namespace}`;
  return [...new Set([serviceName, base, `${base}.svc`, `${base}.svc.cluster.local`, ...extra])];
}

export type RotationDecision =
  | { action: 'none'; nextCheckAtMs: number }
  | { action: 'issue-cert'; why: string }
  /** `staged`: the current CA is valid and only due; its successor is staged before anything is served
   *  with it. Otherwise (no CA, broken, expired) there is nothing trusted to keep and the CA is replaced. */
  | { action: 'new-ca'; why: string; staged?: boolean };

function sansOf(cert: NodeX509): Set<string> {
  const out = new Set<string>();
  for (const part of (cert.subjectAltName ?? '').split(', ')) {
    const m = /^(DNS|IP Address):(.*)$/.exec(part);
    if (m?.[2]) out.add(m[2]);
  }
  return out;
}

/**
 * What to do with the bundle found in the Secret at `nowMs`. Pure apart from parsing. Anything that does
 * not parse or does not fit together (key not matching cert, leaf not signed by the CA) means a new CA.
 */
export function decideRotation(
  bundle: TlsBundle | undefined,
  opts: { nowMs: number; rotateBeforeSeconds: number; sans: readonly string[] },
): RotationDecision {
  if (!bundle) return { action: 'new-ca', why: 'no TLS bundle yet' };
  const rotateBefore = opts.rotateBeforeSeconds * 1000;
  let ca: NodeX509;
  try {
    ca = new NodeX509(bundle.ca.certPem);
    if (!ca.ca || !ca.checkPrivateKey(createPrivateKey(bundle.ca.keyPem))) return { action: 'new-ca', why: 'CA key does not match the CA cert' };
  } catch (e) {
    return { action: 'new-ca', why: `CA does not parse: ${(e as Error).message}` };
  }
  const caNotAfter = Date.parse(ca.validTo);
  if (caNotAfter <= opts.nowMs) return { action: 'new-ca', why: `CA expired at ${ca.validTo}` };
  if (caNotAfter - opts.nowMs <= rotateBefore) return { action: 'new-ca', why: `CA expires at ${ca.validTo}`, staged: true };
  let leaf: NodeX509;
  try {
    leaf = new NodeX509(bundle.serving.certPem);
    if (!leaf.checkPrivateKey(createPrivateKey(bundle.serving.keyPem))) return { action: 'issue-cert', why: 'serving key does not match its cert' };
  } catch (e) {
    return { action: 'issue-cert', why: `serving cert does not parse: ${(e as Error).message}` };
  }
  if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) return { action: 'issue-cert', why: 'serving cert not signed by the current CA' };
  const leafNotAfter = Date.parse(leaf.validTo);
  if (leafNotAfter - opts.nowMs <= rotateBefore) return { action: 'issue-cert', why: `serving cert expires at ${leaf.validTo}` };
  if (Date.parse(leaf.validFrom) > opts.nowMs + CLOCK_SKEW_MS) return { action: 'issue-cert', why: `serving cert not valid before ${leaf.validFrom}` };
  const have = sansOf(leaf);
  const missing = opts.sans.filter((s) => !have.has(s));
  if (missing.length > 0) return { action: 'issue-cert', why: `serving cert lacks SANs ${missing.join(', ')}` };
  return { action: 'none', nextCheckAtMs: Math.min(caNotAfter, leafNotAfter) - rotateBefore };
}

/** Stage 1 of a CA rotation: a successor CA beside the current one; the serving cert stays as it is. */
export async function stageNextCa(current: TlsBundle, opts: { nowMs: number; caValiditySeconds: number; caCommonName: string }): Promise<TlsBundle> {
  const nextCa = await createCA({ commonName: opts.caCommonName, nowMs: opts.nowMs, validitySeconds: opts.caValiditySeconds });
  return { ...current, nextCa };
}

/** Stage 2: the staged CA becomes the CA (the old one is still trusted as previous) and signs a new serving cert. */
export async function promoteNextCa(current: TlsBundle & { nextCa: CertKeyPem }, opts: { nowMs: number; certValiditySeconds: number; sans: readonly string[] }): Promise<TlsBundle> {
  const ca = current.nextCa;
  const previousCaPem = isUsableCa(current.ca.certPem, opts.nowMs) ? current.ca.certPem : undefined;
  const serving = await issueServingCert({ ca, sans: opts.sans, nowMs: opts.nowMs, validitySeconds: opts.certValiditySeconds });
  return previousCaPem ? { ca, serving, previousCaPem } : { ca, serving };
}

/** Parses the published annotation; undefined unless it names this very next CA. */
export function nextCaPublishedAt(annotation: string | undefined, nextCa: CertKeyPem | undefined): number | undefined {
  if (!annotation || !nextCa) return undefined;
  const at = annotation.lastIndexOf('@');
  if (at < 0 || annotation.slice(0, at) !== fingerprint(nextCa.certPem)) return undefined;
  const t = Date.parse(annotation.slice(at + 1));
  return Number.isFinite(t) ? t : undefined;
}

/** Builds the next bundle for a decision; keeps the old CA as previous when the CA changes. */
export async function rotateBundle(
  current: TlsBundle | undefined,
  decision: Exclude<RotationDecision, { action: 'none' }>,
  opts: { nowMs: number; caValiditySeconds: number; certValiditySeconds: number; sans: readonly string[]; caCommonName: string },
): Promise<TlsBundle> {
  let ca = current?.ca;
  let previousCaPem = current?.previousCaPem;
  if (decision.action === 'new-ca' || !ca) {
    previousCaPem = current && isUsableCa(current.ca.certPem, opts.nowMs) ? current.ca.certPem : undefined;
    ca = await createCA({ commonName: opts.caCommonName, nowMs: opts.nowMs, validitySeconds: opts.caValiditySeconds });
  }
  if (previousCaPem && !isUsableCa(previousCaPem, opts.nowMs)) previousCaPem = undefined;
  const serving = await issueServingCert({ ca, sans: opts.sans, nowMs: opts.nowMs, validitySeconds: opts.certValiditySeconds });
  return previousCaPem ? { ca, serving, previousCaPem } : { ca, serving };
}

function isUsableCa(pem: string, nowMs: number): boolean {
  try {
    const c = new NodeX509(pem);
    return c.ca && Date.parse(c.validTo) > nowMs;
  } catch {
    return false;
  }
}

/** The PEM bundle the apiserver should trust: the current CA, the staged next one, and the previous one while it is valid. */
export function caBundlePem(bundle: TlsBundle): string {
  return [bundle.ca.certPem, bundle.nextCa?.certPem, bundle.previousCaPem].filter((p): p is string => !!p).map((p) => p.trim() + '\n').join('');
}

export function bundleToSecretData(bundle: TlsBundle): Record<string, string> {
  const data: Record<string, string> = {
    [SECRET_KEYS.caCert]: Buffer.from(bundle.ca.certPem).toString('base64'),
    [SECRET_KEYS.caKey]: Buffer.from(bundle.ca.keyPem).toString('base64'),
    [SECRET_KEYS.cert]: Buffer.from(bundle.serving.certPem).toString('base64'),
    [SECRET_KEYS.key]: Buffer.from(bundle.serving.keyPem).toString('base64'),
  };
  if (bundle.previousCaPem) data[SECRET_KEYS.previousCaCert] = Buffer.from(bundle.previousCaPem).toString('base64');
  if (bundle.nextCa) {
    data[SECRET_KEYS.nextCaCert] = Buffer.from(bundle.nextCa.certPem).toString('base64');
    data[SECRET_KEYS.nextCaKey] = Buffer.from(bundle.nextCa.keyPem).toString('base64');
  }
  return data;
}

/** Reads a bundle out of Secret data; undefined when a required key is missing. */
export function bundleFromSecretData(data: Record<string, string> | undefined): TlsBundle | undefined {
  if (!data) return undefined;
  const get = (k: string) => (typeof data[k] === 'string' ? Buffer.from(data[k], 'base64').toString('utf8') : undefined);
  const caCert = get(SECRET_KEYS.caCert);
  const caKey = get(SECRET_KEYS.caKey);
  const cert = get(SECRET_KEYS.cert);
  const key = get(SECRET_KEYS.key);
  if (!caCert || !caKey || !cert || !key) return undefined;
  const previousCaPem = get(SECRET_KEYS.previousCaCert);
  const nextCaCert = get(SECRET_KEYS.nextCaCert);
  const nextCaKey = get(SECRET_KEYS.nextCaKey);
  return {
    ca: { certPem: caCert, keyPem: caKey },
    serving: { certPem: cert, keyPem: key },
    ...(previousCaPem ? { previousCaPem } : {}),
    ...(nextCaCert && nextCaKey ? { nextCa: { certPem: nextCaCert, keyPem: nextCaKey } } : {}),
  };
}

/** SHA-256 fingerprint of a PEM cert, for logs and for tests that check which cert is served. */
export function fingerprint(certPem: string): string {
  return new NodeX509(certPem).fingerprint256;
}
