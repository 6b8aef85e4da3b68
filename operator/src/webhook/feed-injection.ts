// What the webhook adds to a pod so that its agent can stream from the operator (docs/adr/0008): where the
// feed is (this replica first, then the Service), the CA that signs the operator's certificate and the TLS
// name to check, and a projected ServiceAccount token for the feed's audience, bound to the pod, which the
// operator checks with a TokenReview. The pod's ServiceAccount needs no rights at all for this.
import { FEED_AUDIENCE, FEED_TOKEN_DIR, FEED_TOKEN_FILE, FEED_TOKEN_VOLUME } from '../../../api/src/feed.js';

export interface FeedInjection {
  /** host:port, tried in order. */
  addresses: string[];
  /** The name the operator's certificate is checked against (the Service's DNS name). */
  serverName: string;
  /** The CA certificates (PEM) the agent trusts for the operator. */
  caPem: string;
}

/** The kubelet renews the token at 80 % of this; the agent reads the file again on every connect. */
export const FEED_TOKEN_EXPIRATION_SECONDS = 3600;

export function feedEnv(feed: FeedInjection): { name: string; value: string }[] {
  return [
    { name: 'KSTREAMS_OPERATOR_ADDRESSES', value: feed.addresses.join(',') },
    { name: 'KSTREAMS_OPERATOR_SERVER_NAME', value: feed.serverName },
    { name: 'KSTREAMS_OPERATOR_CA', value: feed.caPem },
    { name: 'KSTREAMS_FEED_TOKEN_FILE', value: `${FEED_TOKEN_DIR}/${FEED_TOKEN_FILE}` },
  ];
}

export const feedVolumeMount = { name: FEED_TOKEN_VOLUME, mountPath: FEED_TOKEN_DIR, readOnly: true };

export const feedVolume = {
  name: FEED_TOKEN_VOLUME,
  projected: {
    sources: [{ serviceAccountToken: { audience: FEED_AUDIENCE, expirationSeconds: FEED_TOKEN_EXPIRATION_SECONDS, path: FEED_TOKEN_FILE } }],
  },
};
