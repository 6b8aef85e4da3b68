{{/* Names ---------------------------------------------------------------------------------------- */}}

{{- define "kstreams.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: `<release>-<chart>`, or just the release name when it already contains the
chart name (so `helm install kstreams` gives `kstreams`, `kstreams-webhook`, ...). At most 40 characters,
leaving room for the longest suffix (`-sidecar-injector`) within 63.
*/}}
{{- define "kstreams.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kstreams.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kstreams.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kstreams.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kstreams.webhookServiceName" -}}
{{- printf "%s-webhook" (include "kstreams.fullname" .) }}
{{- end }}

{{- define "kstreams.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kstreams.fullname" .) }}
{{- end }}

{{- define "kstreams.webhookConfigurationName" -}}
{{- printf "%s-sidecar-injector" (include "kstreams.fullname" .) }}
{{- end }}

{{/* Name of the webhook entry inside the MutatingWebhookConfiguration (a qualified name). */}}
{{- define "kstreams.webhookName" -}}
sidecar-injector.kstreams.io
{{- end }}

{{- define "kstreams.webhookPath" -}}
/mutate-pods
{{- end }}

{{- define "kstreams.tlsSecretName" -}}
{{- if eq .Values.webhook.tls.mode "self-managed" }}
{{- default (printf "%s-webhook-tls" (include "kstreams.fullname" .)) .Values.webhook.tls.selfManaged.secretName }}
{{- else }}
{{- printf "%s-webhook-tls" (include "kstreams.fullname" .) }}
{{- end }}
{{- end }}

{{- define "kstreams.certificateName" -}}
{{- printf "%s-webhook" (include "kstreams.fullname" .) }}
{{- end }}

{{- define "kstreams.selfSignedIssuerName" -}}
{{- printf "%s-selfsigned" (include "kstreams.fullname" .) }}
{{- end }}

{{- define "kstreams.configMapName" -}}
{{- printf "%s-config" (include "kstreams.fullname" .) }}
{{- end }}

{{- define "kstreams.sidecarRoleName" -}}
{{- printf "%s-sidecar" (include "kstreams.fullname" .) }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------------ */}}

{{- define "kstreams.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kstreams.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kstreams.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kstreams.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kstreams
{{- end }}

{{/* Images ------------------------------------------------------------------------------------------ */}}

{{- define "kstreams.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The sidecar defaults to the operator's image: one image holds the operator and the `kstreams` agent. */}}
{{- define "kstreams.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Webhook ----------------------------------------------------------------------------------------- */}}

{{- define "kstreams.selfManagedTls" -}}
{{- eq .Values.webhook.tls.mode "self-managed" }}
{{- end }}

{{/*
Namespaces never injected, sorted: the system ones, the release namespace and webhook.excludedNamespaces.
Must equal excludedNamespaces() in operator/src/webhook/patch.ts, which the operator applies again.
*/}}
{{- define "kstreams.excludedNamespaces" -}}
{{- list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace | concat .Values.webhook.excludedNamespaces | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
The one webhook entry. Field for field what desiredWebhook() in operator/src/webhook/webhook-configuration.ts
computes, so that the operator (which patches the caBundle in self-managed mode) and `helm upgrade` never
fight over it. No caBundle here: the operator or cert-manager's CA injector owns it.
*/}}
{{- define "kstreams.webhook" -}}
name: {{ include "kstreams.webhookName" . }}
admissionReviewVersions: ["v1", "v1beta1"]
clientConfig:
  service:
    name: {{ include "kstreams.webhookServiceName" . }}
    namespace: {{ .Release.Namespace }}
    port: 443
    path: {{ include "kstreams.webhookPath" . }}
rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
    scope: Namespaced
namespaceSelector:
  matchLabels:
    kstreams.io/inject: enabled
  # kubernetes.io/metadata.name exists from 1.21; on 1.20 the operator still refuses these namespaces.
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "kstreams.excludedNamespaces" . }}
objectSelector:
  matchExpressions:
    - key: kstreams.io/inject
      operator: NotIn
      values: ["false"]
failurePolicy: {{ .Values.webhook.failurePolicy }}
matchPolicy: Equivalent
reinvocationPolicy: IfNeeded
sideEffects: None
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
{{- end }}

{{/* Operator config --------------------------------------------------------------------------------- */}}

{{/*
The operator's config file (KSTREAMS_OPERATOR_CONFIG), parsed by OperatorConfigSchema in
operator/src/config.ts, which refuses unknown keys. identity comes from POD_NAME.
*/}}
{{- define "kstreams.operatorConfig" -}}
{{- $v := .Values }}
{{- $tls := dict }}
{{- if eq $v.webhook.tls.mode "self-managed" }}
{{- $tls = dict "mode" "self-managed" "secretName" (include "kstreams.tlsSecretName" .) "caValiditySeconds" $v.webhook.tls.selfManaged.caValiditySeconds "certValiditySeconds" $v.webhook.tls.selfManaged.certValiditySeconds "rotateBeforeSeconds" $v.webhook.tls.selfManaged.rotateBeforeSeconds "caPropagationSeconds" $v.webhook.tls.selfManaged.caPropagationSeconds }}
{{- else }}
{{- $tls = dict "mode" "cert-manager" "certDir" "/etc/kstreams/webhook-tls" }}
{{- end }}
{{- $sidecar := dict
  "image" (include "kstreams.sidecarImage" .)
  "imagePullPolicy" (default $v.image.pullPolicy $v.sidecar.image.pullPolicy)
  "resources" $v.sidecar.resources
  "agentPort" $v.sidecar.agentPort
  "privileged" $v.sidecar.privileged
  "holdApplicationUntilAttached" $v.sidecar.holdApplicationUntilAttached
  "attachTimeoutSeconds" $v.sidecar.attachTimeoutSeconds
  "nativeSidecar" $v.sidecar.nativeSidecar
  "capture" (ternary (dict "enabled" $v.sidecar.capture.enabled "sizeLimit" $v.sidecar.capture.sizeLimit "claimName" $v.sidecar.capture.claimName) (dict "enabled" $v.sidecar.capture.enabled "sizeLimit" $v.sidecar.capture.sizeLimit) (ne $v.sidecar.capture.claimName "")) }}
{{- $webhook := dict
  "enabled" true
  "thread" $v.webhook.thread
  "port" $v.webhook.port
  "namespace" .Release.Namespace
  "serviceName" (include "kstreams.webhookServiceName" .)
  "servicePort" 443
  "path" (include "kstreams.webhookPath" .)
  "webhookConfigurationName" (include "kstreams.webhookConfigurationName" .)
  "webhookName" (include "kstreams.webhookName" .)
  "manageWebhookConfiguration" (eq $v.webhook.tls.mode "self-managed")
  "tls" $tls
  "failurePolicy" $v.webhook.failurePolicy
  "timeoutSeconds" $v.webhook.timeoutSeconds
  "excludedNamespaces" $v.webhook.excludedNamespaces
  "shutdown" (dict "drainTimeoutMs" $v.webhook.shutdown.drainTimeoutMs)
  "sidecar" $sidecar }}
{{- $config := dict
  "namespace" .Release.Namespace
  "logLevel" $v.operator.logLevel
  "leaderElection" (dict "enabled" true "leaseName" (printf "%s-operator" (include "kstreams.fullname" .)) "leaseDurationMs" $v.operator.leaderElection.leaseDurationMs "renewDeadlineMs" $v.operator.leaderElection.renewDeadlineMs "retryPeriodMs" $v.operator.leaderElection.retryPeriodMs)
  "resyncPeriodMs" $v.operator.resyncPeriodMs
  "reconcileConcurrency" $v.operator.reconcileConcurrency
  "statusWriteIntervalMs" $v.operator.statusWriteIntervalMs
  "statusWritesPerSecond" $v.operator.statusWritesPerSecond
  "feed" (dict "port" $v.operator.feed.port "disconnectGraceMs" $v.operator.feed.disconnectGraceMs "warmupMs" $v.operator.feed.warmupMs "tokenVerification" $v.operator.feed.tokenVerification)
  "detachTimeoutMs" $v.operator.detachTimeoutMs
  "shutdownTimeoutMs" $v.operator.shutdownTimeoutMs
  "server" (dict "host" "0.0.0.0" "port" $v.operator.metricsPort)
  "webhook" $webhook }}
{{- toYaml $config }}
{{- end }}
