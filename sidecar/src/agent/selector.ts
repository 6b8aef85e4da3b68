// Label selector matching with the semantics of Kubernetes' metav1.LabelSelector, except one deliberate
// difference: an empty selector ({} or no requirements) selects NO pod. A StreamPath that taps every pod
// of a namespace by accident would mirror traffic nobody asked for; the API documents this.
import type { LabelSelector } from '../../../api/src/streampath.js';

export type Labels = Readonly<Record<string, string>>;

/** Whether `selector` selects a pod with `labels`. All requirements must hold (AND). */
export function selectorMatches(selector: LabelSelector, labels: Labels): boolean {
  const matchLabels = Object.entries(selector.matchLabels ?? {});
  const expressions = selector.matchExpressions ?? [];
  if (matchLabels.length === 0 && expressions.length === 0) return false;
  const has = (k: string) => Object.prototype.hasOwnProperty.call(labels, k);
  for (const [k, v] of matchLabels) {
    if (!has(k) || labels[k] !== v) return false;
  }
  for (const e of expressions) {
    const values = e.values ?? [];
    switch (e.operator) {
      case 'In':
        // Kubernetes rejects In with no values; such a requirement can never hold.
        if (!has(e.key) || !values.includes(labels[e.key]!)) return false;
        break;
      case 'NotIn':
        // As in Kubernetes: a pod without the label satisfies NotIn.
        if (has(e.key) && values.includes(labels[e.key]!)) return false;
        break;
      case 'Exists':
        if (!has(e.key)) return false;
        break;
      case 'DoesNotExist':
        if (has(e.key)) return false;
        break;
    }
  }
  return true;
}
