// The agent's source of a transform's user program (spec.transform.ops[].program.configMap/key): the
// ConfigMap's binaryData[key] in the pod's namespace, read with the sidecar's ServiceAccount (the sidecar
// ClusterRole grants get on configmaps). Read again on every attach and update: an edited ConfigMap is
// loaded by the next edit of the StreamPath or the next resync.
import type { CoreV1Api } from '@kubernetes/client-node';
import { formatApiError } from '../../../operator/src/kube/errors.js';
import type { ProgramReader, ProgramSource } from '../dataplane/transform.js';

export type ConfigMapReader = Pick<CoreV1Api, 'readNamespacedConfigMap'>;

function httpStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

export function configMapProgramReader(api: ConfigMapReader, namespace: string): ProgramReader {
  return async (source: ProgramSource): Promise<Uint8Array> => {
    if (!('configMap' in source)) {
      throw new Error(`program.path ${source.path} is a file of the kstreams CLI's machine; in a cluster give configMap and key`);
    }
    const what = `ConfigMap ${namespace}/${source.configMap}`;
    let cm;
    try {
      cm = await api.readNamespacedConfigMap({ name: source.configMap, namespace });
    } catch (err) {
      if (httpStatus(err) === 404) {
        throw new Error(`${what} does not exist (kubectl create configmap ${source.configMap} --from-file=${source.key}=PROGRAM.o -n ${namespace})`);
      }
      throw new Error(
        formatApiError(err, {
          verb: 'get',
          object: what,
          forbiddenHint: `the pod's ServiceAccount needs get on configmaps in namespace ${namespace}: label the namespace kstreams.io/inject=enabled so the operator binds the kstreams sidecar ClusterRole there (docs/agent.md)`,
        }),
        { cause: err },
      );
    }
    const b64 = cm.binaryData?.[source.key];
    if (b64 === undefined) {
      const inData = cm.data?.[source.key] !== undefined;
      throw new Error(
        `${what} has no binaryData key ${source.key}` +
          (inData ? ' (it is under data, as text: a BPF object must be binaryData; create it with --from-file)' : ''),
      );
    }
    return new Uint8Array(Buffer.from(b64, 'base64'));
  };
}
