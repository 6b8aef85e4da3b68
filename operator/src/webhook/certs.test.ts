import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  bundleFromSecretData,
  bundleToSecretData,
  caBundlePem,
  createCA,
  decideRotation,
  fingerprint,
  issueServingCert,
  nextCaPublishedAt,
  promoteNextCa,
  rotateBundle,
  stageNextCa,
  servingSANs,
  type TlsBundle,
} from './certs.js';

const HOUR = 3600;
const T0 = Date.parse('2030-01-01T00:00:00Z');
const sans = servingSANs('kstreams-webhook', 'kstreams-system', ['127.0.0.1']);
const opts = { caValiditySeconds: 10 * HOUR, certValiditySeconds: 2 * HOUR, sans, caCommonName: 'ca' };

describe('self-managed webhook PKI', () => {
  let bundle: TlsBundle;
  beforeAll(async () => {
    bundle = await rotateBundle(undefined, { action: 'new-ca', why: 'test' }, { ...opts, nowMs: T0 });
  });

  it('issues a serving cert for the Service names and extra IPs, signed by the CA', () => {
    const leaf = new X509Certificate(bundle.serving.certPem);
    const ca = new X509Certificate(bundle.ca.certPem);
    expect(leaf.subjectAltName).toBe(
      'DNS:kstreams-webhook, DNS:kstreams-webhook.kstreams-system, DNS:kstreams-webhook.kstreams-system.svc, ' +
        'DNS:kstreams-webhook.kstreams-system.svc.cluster.local, IP Address:127.0.0.1',
    );
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(ca.ca).toBe(true);
    expect(leaf.keyUsage).toContain('1.3.6.1.5.5.7.3.1');
  });

  it('backdates notBefore for clock skew and never outlives the CA', async () => {
    const leaf = new X509Certificate(bundle.serving.certPem);
    expect(Date.parse(leaf.validFrom)).toBeLessThan(T0);
    const ca = await createCA({ commonName: 'short', nowMs: T0, validitySeconds: HOUR });
    const long = await issueServingCert({ ca, sans, nowMs: T0, validitySeconds: 100 * HOUR });
    expect(Date.parse(new X509Certificate(long.certPem).validTo)).toBeLessThanOrEqual(T0 + HOUR * 1000);
  });

  it('decides by the clock: nothing, then a new serving cert, then a new CA', () => {
    const at = (h: number) => decideRotation(bundle, { nowMs: T0 + h * HOUR * 1000, rotateBeforeSeconds: HOUR / 2, sans }).action;
    expect(at(0)).toBe('none');
    expect(at(1.4)).toBe('none');
    expect(at(1.6)).toBe('issue-cert');
    expect(at(9.6)).toBe('new-ca');
    const d = decideRotation(bundle, { nowMs: T0, rotateBeforeSeconds: HOUR / 2, sans });
    expect(d.action === 'none' && d.nextCheckAtMs).toBe(T0 + 1.5 * HOUR * 1000);
  });

  it('re-issues when a SAN is missing, or when cert and key do not belong together', async () => {
    expect(decideRotation(bundle, { nowMs: T0, rotateBeforeSeconds: 60, sans: [...sans, '10.0.0.1'] }).action).toBe('issue-cert');
    const other = await issueServingCert({ ca: bundle.ca, sans, nowMs: T0, validitySeconds: HOUR });
    const mixed = { ...bundle, serving: { certPem: bundle.serving.certPem, keyPem: other.keyPem } };
    expect(decideRotation(mixed, { nowMs: T0, rotateBeforeSeconds: 60, sans }).action).toBe('issue-cert');
    const garbage = { ...bundle, ca: { certPem: 'junk', keyPem: 'junk' } };
    expect(decideRotation(garbage, { nowMs: T0, rotateBeforeSeconds: 60, sans }).action).toBe('new-ca');
    expect(decideRotation(undefined, { nowMs: T0, rotateBeforeSeconds: 60, sans }).action).toBe('new-ca');
  });

  it('keeps the CA on a serving cert rotation and trusts the previous CA after a CA rotation', async () => {
    const nowMs = T0 + 1.6 * HOUR * 1000;
    const certOnly = await rotateBundle(bundle, { action: 'issue-cert', why: 't' }, { ...opts, nowMs });
    expect(certOnly.ca).toEqual(bundle.ca);
    expect(certOnly.serving.certPem).not.toBe(bundle.serving.certPem);
    expect(decideRotation(certOnly, { nowMs, rotateBeforeSeconds: HOUR / 2, sans }).action).toBe('none');

    const newCa = await rotateBundle(bundle, { action: 'new-ca', why: 't' }, { ...opts, nowMs });
    expect(newCa.ca.certPem).not.toBe(bundle.ca.certPem);
    expect(newCa.previousCaPem).toBe(bundle.ca.certPem);
    expect(caBundlePem(newCa).match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    // Once the previous CA has expired it is dropped.
    const later = await rotateBundle(newCa, { action: 'issue-cert', why: 't' }, { ...opts, nowMs: T0 + 11 * HOUR * 1000 });
    expect(later.previousCaPem).toBeUndefined();
  });

  it('round-trips through Secret data and refuses incomplete data', () => {
    expect(bundleFromSecretData(bundleToSecretData(bundle))).toEqual(bundle);
    const data = bundleToSecretData(bundle);
    delete data['tls.key'];
    expect(bundleFromSecretData(data)).toBeUndefined();
    expect(bundleFromSecretData(undefined)).toBeUndefined();
  });

  it('stages a due CA: the next CA joins the caBundle while the serving cert stays; promotion serves a cert it signed', async () => {
    const nowMs = T0 + 9.6 * HOUR * 1000;
    const due = decideRotation(bundle, { nowMs, rotateBeforeSeconds: HOUR / 2, sans });
    expect(due).toMatchObject({ action: 'new-ca', staged: true });
    // An expired or broken CA is replaced at once: there is nothing trusted to keep.
    expect(decideRotation(bundle, { nowMs: T0 + 10.1 * HOUR * 1000, rotateBeforeSeconds: HOUR / 2, sans })).toMatchObject({ action: 'new-ca' });
    expect(decideRotation(bundle, { nowMs: T0 + 10.1 * HOUR * 1000, rotateBeforeSeconds: HOUR / 2, sans })).not.toHaveProperty('staged');

    const staged = await stageNextCa(bundle, { nowMs, caValiditySeconds: 10 * HOUR, caCommonName: 'next' });
    expect(staged.serving).toEqual(bundle.serving);
    expect(staged.ca).toEqual(bundle.ca);
    expect(caBundlePem(staged)).toBe(bundle.ca.certPem.trim() + '\n' + staged.nextCa!.certPem.trim() + '\n');
    expect(bundleFromSecretData(bundleToSecretData(staged))).toEqual(staged);

    const promoted = await promoteNextCa(staged as TlsBundle & { nextCa: NonNullable<TlsBundle['nextCa']> }, { nowMs, certValiditySeconds: 2 * HOUR, sans });
    expect(promoted.ca).toEqual(staged.nextCa);
    expect(promoted.previousCaPem).toBe(bundle.ca.certPem);
    expect(promoted.nextCa).toBeUndefined();
    expect(new X509Certificate(promoted.serving.certPem).checkIssued(new X509Certificate(staged.nextCa!.certPem))).toBe(true);
    expect(decideRotation(promoted, { nowMs, rotateBeforeSeconds: HOUR / 2, sans }).action).toBe('none');

    const fp = fingerprint(staged.nextCa!.certPem);
    expect(nextCaPublishedAt(`${fp}@2030-01-01T09:36:00.000Z`, staged.nextCa)).toBe(Date.parse('2030-01-01T09:36:00.000Z'));
    expect(nextCaPublishedAt(`${fingerprint(bundle.ca.certPem)}@2030-01-01T09:36:00.000Z`, staged.nextCa)).toBeUndefined(); // another CA's record
    expect(nextCaPublishedAt('garbage', staged.nextCa)).toBeUndefined();
    expect(nextCaPublishedAt(undefined, staged.nextCa)).toBeUndefined();
  });
});
