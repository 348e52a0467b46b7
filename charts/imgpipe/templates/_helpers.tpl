{{/* Names and labels ---------------------------------------------------------------------- */}}

{{- define "imgpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imgpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "imgpipe.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "imgpipe.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* (list $ "component-name") */}}
{{- define "imgpipe.resourceName" -}}
{{- printf "%s-%s" (include "imgpipe.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imgpipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "imgpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imgpipe
{{- end }}

{{/* (list $ "component-name"): what selects one component's pods. */}}
{{- define "imgpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imgpipe.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "imgpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imgpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Hook Jobs run before the release's own resources exist, so they get a ServiceAccount of their own. */}}
{{- define "imgpipe.jobServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- include "imgpipe.resourceName" (list . "jobs") }}
{{- else }}
{{- include "imgpipe.serviceAccountName" . }}
{{- end }}
{{- end }}

{{- define "imgpipe.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The topic registry ------------------------------------------------------------------------
files/topics is a symlink to schemas/topics (Helm follows it and `helm package` copies the files), so
topic names and partition counts are read from the registry itself, never spelled here. Yields
{<registry key>: {name, partitions}}. */}}
{{- define "imgpipe.registry" -}}
{{- $registry := dict }}
{{- range $path, $_ := .Files.Glob "files/topics/*.yaml" }}
{{- $topic := $.Files.Get $path | fromYaml }}
{{- $_ := set $registry (base $path | trimSuffix ".yaml") (dict "name" $topic.name "partitions" $topic.partitions) }}
{{- end }}
{{- if not $registry }}
{{- fail "files/topics/ is empty: the chart reads the topic registry through the symlink files/topics -> schemas/topics" }}
{{- end }}
{{- toYaml $registry }}
{{- end }}

{{/* Components ----------------------------------------------------------------------------------
Every enabled component: componentDefaults deep-merged with its entry, lag topics resolved through the
registry and autoscaling checked. Every template ranges over this, so the rules live here only. */}}
{{- define "imgpipe.components" -}}
{{- $registry := include "imgpipe.registry" . | fromYaml }}
{{- $components := dict }}
{{- range $name, $entry := .Values.components }}
{{- $c := mergeOverwrite (deepCopy $.Values.componentDefaults) (deepCopy $entry) }}
{{- if $c.enabled }}
{{- if not $c.args }}
{{- fail (printf "components.%s.args: name the imgpipe subcommand" $name) }}
{{- end }}
{{- if and (has "webhooks" $c.requires) (not $.Values.webhooks.signingKeysSecret.name) }}
{{- fail (printf "components.%s needs webhooks.signingKeysSecret.name: the existing Secret with the webhook signing keys" $name) }}
{{- end }}
{{- $topics := list }}
{{- $partitions := 0 }}
{{- range $key := $c.kafka.lagTopics }}
{{- $topic := get $registry $key }}
{{- if not $topic }}
{{- fail (printf "components.%s.kafka.lagTopics: %q is not a topic registry key (schemas/topics/<key>.yaml)" $name $key) }}
{{- end }}
{{- $topics = append $topics $topic.name }}
{{- $partitions = max $partitions (int $topic.partitions) }}
{{- end }}
{{- $_ := set $c.kafka "topics" $topics }}
{{- $scaling := $c.autoscaling }}
{{- if eq $scaling.mode "keda" }}
{{- if or (not $c.kafka.group) (not $topics) }}
{{- fail (printf "components.%s: autoscaling.mode keda needs kafka.group and kafka.lagTopics" $name) }}
{{- end }}
{{- if kindIs "invalid" $scaling.maxReplicas }}
{{- $_ := set $scaling "maxReplicas" $partitions }}
{{- end }}
{{- else if eq $scaling.mode "hpa" }}
{{- if kindIs "invalid" $scaling.maxReplicas }}
{{- fail (printf "components.%s.autoscaling.maxReplicas is required with mode hpa" $name) }}
{{- end }}
{{- if lt (int $scaling.minReplicas) 1 }}
{{- fail (printf "components.%s.autoscaling: an HPA cannot scale to zero (minReplicas >= 1); KEDA can" $name) }}
{{- end }}
{{- end }}
{{- /* A stage's per-pod concurrency becomes its settings, and its CPU follows the worker count. */}}
{{- with $c.concurrency }}
{{- $_ := set $c.settings "STAGE_WORKERS" (toString .workers) }}
{{- $_ := set $c.settings "STAGE_MAX_IN_FLIGHT" (toString .maxInFlight) }}
{{- $perWorker := toString .cpuPerWorker }}
{{- $milli := hasSuffix "m" $perWorker | ternary (trimSuffix "m" $perWorker | int) (mulf (float64 $perWorker) 1000 | int) }}
{{- $cpu := printf "%dm" (mul $milli (int .workers)) }}
{{- $_ := set $c.resources "requests" (merge (dict "cpu" $cpu) (default dict $c.resources.requests)) }}
{{- $_ := set $c.resources "limits" (merge (dict "cpu" $cpu) (default dict $c.resources.limits)) }}
{{- end }}
{{- if and (ne $scaling.mode "none") (gt (int $scaling.minReplicas) (int $scaling.maxReplicas)) }}
{{- fail (printf "components.%s.autoscaling: minReplicas %v is above maxReplicas %v" $name $scaling.minReplicas $scaling.maxReplicas) }}
{{- end }}
{{- $_ := set $components $name $c }}
{{- end }}
{{- end }}
{{- toYaml $components }}
{{- end }}

{{/* Enabled jobs: componentDefaults (pod placement, scratch volumes), then jobDefaults, then the entry. */}}
{{- define "imgpipe.jobs" -}}
{{- $jobs := dict }}
{{- range $name, $entry := .Values.jobs }}
{{- $job := mergeOverwrite (deepCopy $.Values.componentDefaults) (deepCopy $.Values.jobDefaults) (deepCopy $entry) }}
{{- if $job.enabled }}
{{- $_ := set $jobs $name $job }}
{{- end }}
{{- end }}
{{- toYaml $jobs }}
{{- end }}

{{/* Settings and credentials ------------------------------------------------------------------ */}}

{{/* IMGPIPE_* every process shares (RuntimeSettings fields): the ConfigMap's data, and inline env of
the hook Jobs, which run before that ConfigMap exists. */}}
{{- define "imgpipe.sharedSettings" -}}
{{- $settings := dict "IMGPIPE_KAFKA_BOOTSTRAP_SERVERS" (required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers) }}
{{- $_ := set $settings "IMGPIPE_S3_BUCKET" .Values.s3.bucket }}
{{- $_ := set $settings "IMGPIPE_S3_REGION" .Values.s3.region }}
{{- if .Values.s3.endpointUrl }}
{{- $_ := set $settings "IMGPIPE_S3_ENDPOINT_URL" .Values.s3.endpointUrl }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{- $_ := set $settings (printf "IMGPIPE_%s" $key) (toString $value) }}
{{- end }}
{{- toYaml $settings }}
{{- end }}

{{/* (list $ uses): the existing Secrets a workload reads, as {setting: {name, key}}. */}}
{{- define "imgpipe.secretRefs" -}}
{{- $root := index . 0 }}
{{- $uses := index . 1 }}
{{- $refs := dict }}
{{- if has "database" $uses }}
{{- $secret := $root.Values.database.urlSecret }}
{{- $_ := set $refs "DATABASE_URL" (dict "name" (required "database.urlSecret.name: the existing Secret with the database URL is required" $secret.name) "key" $secret.key) }}
{{- end }}
{{- if and (has "s3" $uses) $root.Values.s3.credentialsSecret.name }}
{{- $secret := $root.Values.s3.credentialsSecret }}
{{- $_ := set $refs "S3_ACCESS_KEY_ID" (dict "name" $secret.name "key" $secret.accessKeyIdKey) }}
{{- $_ := set $refs "S3_SECRET_ACCESS_KEY" (dict "name" $secret.name "key" $secret.secretAccessKeyKey) }}
{{- end }}
{{- if and (has "kafka" $uses) $root.Values.kafka.clientConfigSecret.name }}
{{- $secret := $root.Values.kafka.clientConfigSecret }}
{{- $_ := set $refs "KAFKA_CLIENT_CONFIG" (dict "name" $secret.name "key" $secret.key) }}
{{- end }}
{{- if and (has "webhooks" $uses) $root.Values.webhooks.signingKeysSecret.name }}
{{- $secret := $root.Values.webhooks.signingKeysSecret }}
{{- $_ := set $refs "WEBHOOK_SIGNING_KEYS" (dict "name" $secret.name "key" $secret.key) }}
{{- end }}
{{- toYaml $refs }}
{{- end }}

{{/* Pods ------------------------------------------------------------------------------------------
(dict "root" $ "name" name "workload" merged-values "job" bool): the pod spec of a component's
Deployment or of a hook Job. */}}
{{- define "imgpipe.podSpec" -}}
{{- $root := .root }}
{{- $w := .workload }}
{{- $secretRefs := include "imgpipe.secretRefs" (list $root $w.uses) | fromYaml }}
{{- if .job }}
serviceAccountName: {{ include "imgpipe.jobServiceAccountName" $root }}
restartPolicy: Never
{{- else }}
serviceAccountName: {{ include "imgpipe.serviceAccountName" $root }}
terminationGracePeriodSeconds: {{ int $w.terminationGracePeriodSeconds }}
{{- end }}
# No process talks to the Kubernetes API.
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
containers:
  - name: {{ .name }}
    image: {{ include "imgpipe.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml $w.args | nindent 6 }}
    {{- if not .job }}
    ports:
      - name: {{ $w.port.name }}
        containerPort: {{ int $w.port.containerPort }}
        protocol: TCP
    startupProbe:
      httpGet: {path: {{ $w.probes.liveness }}, port: {{ $w.port.name }}}
      periodSeconds: 2
      failureThreshold: {{ int $w.probes.startupFailureThreshold }}
    livenessProbe:
      httpGet: {path: {{ $w.probes.liveness }}, port: {{ $w.port.name }}}
      periodSeconds: 10
      timeoutSeconds: 3
      failureThreshold: 3
    readinessProbe:
      httpGet: {path: {{ $w.probes.readiness }}, port: {{ $w.port.name }}}
      periodSeconds: 5
      timeoutSeconds: 3
      failureThreshold: 2
    envFrom:
      - configMapRef:
          name: {{ include "imgpipe.resourceName" (list $root "settings") }}
    {{- end }}
    env:
      - name: IMGPIPE_SERVICE_NAME
        value: {{ .name | quote }}
      {{- if .job }}
      {{- range $key, $value := include "imgpipe.sharedSettings" $root | fromYaml }}
      - name: {{ $key }}
        value: {{ $value | quote }}
      {{- end }}
      {{- else }}
      - name: IMGPIPE_{{ $w.port.setting }}
        value: {{ $w.port.containerPort | int | quote }}
      {{- end }}
      {{- range $key, $value := $w.settings }}
      - name: IMGPIPE_{{ $key }}
        value: {{ toString $value | quote }}
      {{- end }}
      {{- range $setting, $ref := $secretRefs }}
      - name: IMGPIPE_{{ $setting }}
        valueFrom:
          secretKeyRef: {name: {{ $ref.name }}, key: {{ $ref.key }}}
      {{- end }}
      {{- range $w.secretEnv }}
      - name: IMGPIPE_{{ .setting }}
        valueFrom:
          secretKeyRef: {name: {{ .name }}, key: {{ .key }}}
      {{- end }}
      {{- with concat $root.Values.extraEnv $w.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    resources:
      {{- toYaml $w.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- range $w.emptyDirs }}
      - {name: {{ .name }}, mountPath: {{ .mountPath }}}
      {{- end }}
volumes:
  {{- range $w.emptyDirs }}
  - name: {{ .name }}
    emptyDir:
      {{- with .sizeLimit }}
      sizeLimit: {{ . }}
      {{- end }}
  {{- end }}
{{- with $w.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and (not .job) $w.topologySpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "imgpipe.selectorLabels" (list $root .name) | nindent 8 }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "workload" merged-values): pod annotations that roll the pods when what they read
changes: the settings ConfigMap, the Secrets (looked up; empty when rendering offline), a token. */}}
{{- define "imgpipe.rolloutAnnotations" -}}
{{- $root := .root }}
checksum/settings: {{ include "imgpipe.sharedSettings" $root | sha256sum }}
{{- if $root.Values.rollOnSecretChange }}
{{- $data := dict }}
{{- $refs := include "imgpipe.secretRefs" (list $root .workload.uses) | fromYaml }}
{{- range $ref := concat (values $refs) .workload.secretEnv }}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace $ref.name }}
{{- $_ := set $data (printf "%s/%s" $ref.name $ref.key) (dig "data" $ref.key "" $secret) }}
{{- end }}
checksum/secrets: {{ toJson $data | sha256sum }}
{{- end }}
{{- with $root.Values.rolloutToken }}
imgpipe.io/rollout-token: {{ . | quote }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress: unrestricted when networkPolicy.egress is empty, else DNS plus those rules. */}}
{{- define "imgpipe.egressRules" -}}
{{- if .egress }}
egress:
  # DNS, wherever the resolver runs.
  - ports:
      - {port: 53, protocol: UDP}
      - {port: 53, protocol: TCP}
  {{- toYaml .egress | nindent 2 }}
{{- end }}
{{- end }}
