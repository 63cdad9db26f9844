{{/*
Names. The full name is cut to 42 characters so that "<full name>-<component>" stays a valid
StatefulSet name (52, leaving room for the revision hash) and Service name (63).
*/}}
{{- define "itmguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "itmguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<full name>-<suffix>"; call with (list $ "suffix"). */}}
{{- define "itmguard.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "itmguard.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "itmguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels per the Helm guide; call with (dict "root" $ "component" "worker"). */}}
{{- define "itmguard.labels" -}}
helm.sh/chart: {{ include "itmguard.chart" .root }}
{{ include "itmguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: itmguard
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "itmguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "itmguard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference; call with (dict "root" $ "gpu" true|false). */}}
{{- define "itmguard.image" -}}
{{- $v := .root.Values }}
{{- $repository := $v.image.repository }}
{{- $tag := default .root.Chart.AppVersion $v.image.tag }}
{{- $digest := $v.image.digest }}
{{- if .gpu }}
{{- $repository = default $v.image.repository $v.gpuImage.repository }}
{{- $tag = default (printf "%s-gpu" $tag) $v.gpuImage.tag }}
{{- $digest = $v.gpuImage.digest }}
{{- end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{- define "itmguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "itmguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read credentials from. */}}
{{- define "itmguard.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "itmguard.componentName" (list . "secrets") }}
{{- end }}
{{- end }}

{{- define "itmguard.kafka.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "itmguard.kafka.tls" -}}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{/* Whether Kafka TLS files are mounted: TLS on and a CA or a client certificate asked for. */}}
{{- define "itmguard.kafka.tlsFiles" -}}
{{- $t := .Values.kafka.tls }}
{{- if and (include "itmguard.kafka.tls" .) (or $t.caKey $t.certKey) }}true{{ end }}
{{- end }}

{{- define "itmguard.kafka.tlsSecretName" -}}
{{- $name := default .Values.secrets.existingSecret .Values.kafka.tls.secretName }}
{{- if not $name }}
{{- fail "kafka.tls: the CA and client certificate files are read from an existing Secret: set kafka.tls.secretName or secrets.existingSecret (or caKey and certKey to \"\")" }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "itmguard.kafka.tlsDir" -}}/etc/itmguard/kafka-tls{{- end }}

{{- define "itmguard.trtCacheDir" -}}/var/cache/itmguard/tensorrt{{- end }}

{{- define "itmguard.worker.providers" -}}
{{- $providers := .Values.worker.providers }}
{{- if not $providers }}
{{- $providers = ternary (list "tensorrt" "cuda") (list "cpu") .Values.worker.gpu.enabled }}
{{- end }}
{{- join "," $providers }}
{{- end }}

{{/* Threads per model call: the value, else the CPU limit, else the CPU request, else 0. */}}
{{- define "itmguard.worker.cpuThreads" -}}
{{- $w := .Values.worker }}
{{- if not (kindIs "invalid" $w.cpuThreads) }}
{{- int64 $w.cpuThreads }}
{{- else }}
{{- $cpu := "" }}
{{- $resources := $w.resources | default dict }}
{{- with (($resources.limits | default dict).cpu) }}{{ $cpu = toString . }}{{ end }}
{{- if not $cpu }}
{{- with (($resources.requests | default dict).cpu) }}{{ $cpu = toString . }}{{ end }}
{{- end }}
{{- if not $cpu }}0
{{- else if hasSuffix "m" $cpu }}
{{- max 1 (div (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else }}
{{- max 1 (int64 (floor (float64 $cpu))) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Seconds the worker may need after SIGTERM: shutdown grace + a batch + preStop. */}}
{{- define "itmguard.worker.stopBudget" -}}
{{- $w := .Values.worker }}
{{- add (int64 (ceil $w.shutdownGraceSeconds)) (int64 $w.batchSeconds) (int64 $w.preStopSleepSeconds) }}
{{- end }}

{{- define "itmguard.worker.terminationGracePeriodSeconds" -}}
{{- $w := .Values.worker }}
{{- $needed := include "itmguard.worker.stopBudget" . | int64 }}
{{- if kindIs "invalid" $w.terminationGracePeriodSeconds }}
{{- max 60 $needed }}
{{- else if lt (int64 $w.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) is shorter than the worker needs after SIGTERM: shutdownGraceSeconds + batchSeconds + preStopSleepSeconds = %d" (int64 $w.terminationGracePeriodSeconds) $needed) }}
{{- else }}
{{- int64 $w.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The worker's non-secret settings, as YAML: the data of its ConfigMap. Integers go through
int64 so that large ones are not printed in exponent form.
*/}}
{{- define "itmguard.worker.settings" -}}
{{- $v := .Values }}
{{- $w := $v.worker }}
{{- $k := $v.kafka }}
ITMGUARD_KAFKA_BOOTSTRAP: {{ join "," $k.bootstrap | quote }}
ITMGUARD_KAFKA_SECURITY_PROTOCOL: {{ $k.securityProtocol | quote }}
{{- if include "itmguard.kafka.sasl" . }}
ITMGUARD_KAFKA_SASL_MECHANISM: {{ $k.sasl.mechanism | quote }}
{{- end }}
{{- if include "itmguard.kafka.tls" . }}
{{- if $k.tls.caKey }}
ITMGUARD_KAFKA_SSL_CAFILE: {{ printf "%s/ca.crt" (include "itmguard.kafka.tlsDir" .) | quote }}
{{- end }}
{{- if $k.tls.certKey }}
ITMGUARD_KAFKA_SSL_CERTFILE: {{ printf "%s/tls.crt" (include "itmguard.kafka.tlsDir" .) | quote }}
ITMGUARD_KAFKA_SSL_KEYFILE: {{ printf "%s/tls.key" (include "itmguard.kafka.tlsDir" .) | quote }}
{{- end }}
{{- end }}
ITMGUARD_POSTS_TOPIC: {{ $k.postsTopic | quote }}
ITMGUARD_FLAGS_TOPIC: {{ $k.flagsTopic | quote }}
ITMGUARD_DLQ_TOPIC: {{ $k.dlqTopic | quote }}
ITMGUARD_DECISIONS_TOPIC: {{ $k.decisionsTopic | quote }}
ITMGUARD_GROUP_ID: {{ $k.groupId | quote }}
ITMGUARD_BUNDLE: {{ trimSuffix "/" (printf "/models/%s" (trimPrefix "/" $w.bundle.path)) | quote }}
{{- if $w.shadow.path }}
ITMGUARD_SHADOW_BUNDLE: {{ trimSuffix "/" (printf "/models/%s" (trimPrefix "/" $w.shadow.path)) | quote }}
{{- if not (kindIs "invalid" $w.shadow.threshold) }}
ITMGUARD_SHADOW_THRESHOLD: {{ $w.shadow.threshold | toString | quote }}
{{- end }}
ITMGUARD_SHADOW_WAIT_S: {{ $w.shadow.waitSeconds | toString | quote }}
{{- end }}
ITMGUARD_MAX_BATCH: {{ int64 $w.maxBatch | quote }}
ITMGUARD_MAX_WAIT_MS: {{ int64 $w.maxWaitMs | quote }}
{{- if not (kindIs "invalid" $w.threshold) }}
ITMGUARD_THRESHOLD: {{ $w.threshold | toString | quote }}
{{- end }}
ITMGUARD_PROVIDERS: {{ include "itmguard.worker.providers" . | quote }}
ITMGUARD_TRT_CACHE_DIR: {{ include "itmguard.trtCacheDir" . | quote }}
ITMGUARD_CPU_THREADS: {{ include "itmguard.worker.cpuThreads" . | quote }}
ITMGUARD_SESSION_TIMEOUT_S: {{ $w.sessionTimeoutSeconds | toString | quote }}
ITMGUARD_HEARTBEAT_S: {{ $w.heartbeatSeconds | toString | quote }}
ITMGUARD_SHUTDOWN_GRACE_S: {{ $w.shutdownGraceSeconds | toString | quote }}
ITMGUARD_METRICS_HOST: "0.0.0.0"
ITMGUARD_METRICS_PORT: {{ int64 $w.metricsPort | quote }}
ITMGUARD_LOG_LEVEL: {{ $v.logLevel | quote }}
{{- end }}

{{- define "itmguard.review.settings" -}}
{{- $r := .Values.review }}
ITMGUARD_REVIEW_HOST: "0.0.0.0"
ITMGUARD_REVIEW_PORT: {{ int64 $r.port | quote }}
ITMGUARD_REVIEW_LEASE_S: {{ $r.leaseSeconds | toString | quote }}
ITMGUARD_REVIEW_ORDER: {{ $r.order | quote }}
ITMGUARD_LOG_LEVEL: {{ .Values.logLevel | quote }}
{{- end }}

{{/*
A ConfigMap's data: the chart's settings plus extraEnv, which may not repeat one of them nor
name one the pod sets itself. Call with (dict "root" $ "settings" <yaml> "extraEnv" <map>
"reserved" <list> "what" "worker.extraEnv").
*/}}
{{- define "itmguard.configData" -}}
{{- $data := fromYaml .settings }}
{{- range $name, $value := .extraEnv }}
{{- if or (hasKey $data $name) (has $name $.reserved) }}
{{- fail (printf "%s.%s: the chart sets %s itself; use its own value instead" $.what $name $name) }}
{{- end }}
{{- $_ := set $data $name (toString $value) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* Env names a pod takes from the Secret or the downward API, never from a ConfigMap. */}}
{{- define "itmguard.reservedEnv" -}}
- ITMGUARD_DATABASE_URL
- ITMGUARD_REVIEW_SECRET
- ITMGUARD_KAFKA_SASL_USERNAME
- ITMGUARD_KAFKA_SASL_PASSWORD
- ITMGUARD_GROUP_INSTANCE_ID
{{- end }}

{{/* The restricted profile, for every pod and container the chart makes. */}}
{{- define "itmguard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int64 .Values.podSecurity.runAsUser }}
runAsGroup: {{ int64 .Values.podSecurity.runAsGroup }}
fsGroup: {{ int64 .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "itmguard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ int64 .Values.podSecurity.runAsUser }}
runAsGroup: {{ int64 .Values.podSecurity.runAsGroup }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* A secretKeyRef env entry; call with (list "ENV_NAME" "secret-name" "key"). */}}
{{- define "itmguard.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 | quote }}
      key: {{ index . 2 | quote }}
{{- end }}

{{/*
Topology spread constraints; one without a labelSelector gets the component's selector labels.
Call with (dict "root" $ "component" "worker" "constraints" <list>).
*/}}
{{- define "itmguard.topologySpread" -}}
{{- $selector := include "itmguard.selectorLabels" . | fromYaml }}
{{- $out := list }}
{{- range .constraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $out = append $out $constraint }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Checks across values that the schema cannot state; included by templates/validate.yaml so that
any failing one stops the render with its message.
*/}}
{{- define "itmguard.validate" -}}
{{- $v := .Values }}
{{- $w := $v.worker }}
{{- $s := $v.secrets }}
{{- if and $s.existingSecret $s.create }}
{{- fail "secrets: set either secrets.existingSecret or secrets.create, not both" }}
{{- end }}
{{- if not (or $s.existingSecret $s.create) }}
{{- fail "secrets: the database URL and other credentials come from a Secret: set secrets.existingSecret (recommended) or secrets.create with secrets.values" }}
{{- end }}
{{- if and $s.create $v.migrations.enabled }}
{{- fail "migrations: the migration Job runs as a pre-install hook, before the chart's own Secret exists; use secrets.existingSecret, or set migrations.enabled=false and run `itmguard db upgrade` yourself" }}
{{- end }}
{{- if not (or $w.bundle.existingClaim $w.bundle.volume) }}
{{- fail "worker.bundle: the model bundle comes from a volume: set worker.bundle.existingClaim (or worker.bundle.volume)" }}
{{- end }}
{{- if and $w.bundle.existingClaim $w.bundle.volume }}
{{- fail "worker.bundle: set either worker.bundle.existingClaim or worker.bundle.volume, not both" }}
{{- end }}
{{- if and $w.staticMembership (ne $w.kind "StatefulSet") }}
{{- fail "worker.staticMembership needs worker.kind=StatefulSet: the group instance id is the pod name, and only a StatefulSet keeps pod names across restarts" }}
{{- end }}
{{- if gt (mulf (float64 $w.heartbeatSeconds) 3.0) (float64 $w.sessionTimeoutSeconds) }}
{{- fail "worker.heartbeatSeconds must be at most a third of worker.sessionTimeoutSeconds" }}
{{- end }}
{{- if $w.gpu.enabled }}
{{- range $part := list "requests" "limits" }}
{{- if hasKey (get ($w.resources | default dict) $part | default dict) $w.gpu.resourceName }}
{{- fail (printf "worker.resources.%s: give GPUs with worker.gpu.count, which the chart puts in limits only" $part) }}
{{- end }}
{{- end }}
{{- if and (eq $w.kind "Deployment") $w.updateStrategy }}
{{- $strategy := $w.updateStrategy }}
{{- if ne (default "RollingUpdate" $strategy.type) "Recreate" }}
{{- $rolling := $strategy.rollingUpdate | default dict }}
{{- if or (not (hasKey $rolling "maxSurge")) (not (has (toString $rolling.maxSurge) (list "0" "0%"))) }}
{{- fail "worker.updateStrategy: a GPU Deployment must roll with type Recreate or rollingUpdate.maxSurge 0: a surge pod waits Pending for a GPU that the old pods hold" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $partitions := $v.kafka.postsPartitions }}
{{- $autoscaling := $v.autoscaling }}
{{- if ne $autoscaling.mode "none" }}
{{- if kindIs "invalid" $partitions }}
{{- fail "autoscaling: set kafka.postsPartitions, the posts topic's partition count, which caps autoscaling.maxReplicas" }}
{{- end }}
{{- if and (gt (int64 $autoscaling.maxReplicas) (int64 $partitions)) (not $autoscaling.allowIdleConsumers) }}
{{- fail (printf "autoscaling.maxReplicas (%d) is above kafka.postsPartitions (%d): the extra replicas would idle; lower it or set autoscaling.allowIdleConsumers" (int64 $autoscaling.maxReplicas) (int64 $partitions)) }}
{{- end }}
{{- if gt (int64 $autoscaling.minReplicas) (int64 $autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must be at most autoscaling.maxReplicas" }}
{{- end }}
{{- if and (eq (int64 $autoscaling.minReplicas) 0) (ne $autoscaling.mode "keda") }}
{{- fail "autoscaling.minReplicas 0 (scale to zero) needs autoscaling.mode=keda; an HPA keeps at least one replica" }}
{{- end }}
{{- end }}
{{- if $v.review.enabled }}
{{- if and $s.create (lt (len $s.values.reviewSecret) 32) }}
{{- fail "secrets.values.reviewSecret must be at least 32 characters (it signs the review page's session cookies)" }}
{{- end }}
{{- end }}
{{- end }}
