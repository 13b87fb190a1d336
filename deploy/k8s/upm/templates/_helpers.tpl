{{/*
Names, labels and the component table every template shares.
*/}}

{{- define "upm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: the release name, with the chart name appended unless the
release name already contains it. Truncated so "<prefix>-profile-worker-metrics" stays a valid
DNS label.
*/}}
{{- define "upm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "upm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "upm.labels" -}}
helm.sh/chart: {{ include "upm.chart" . }}
app.kubernetes.io/name: {{ include "upm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: upm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "profile"). */}}
{{- define "upm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "upm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects: the common labels plus the component. */}}
{{- define "upm.componentLabels" -}}
{{ include "upm.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The components. kind "server" runs `upm serve <service>` behind a Service; kind "worker" runs
`upm worker <service>` (background consumers plus a health-only gRPC server for probes).
healthService is the name probes ask the standard health service about ("" = the whole server).
splitWorkers: the service's workers run in their own Deployment, so its servers must not run
them (UPM_RUN_WORKERS=false). Ingest keeps its light workers (the suppression feed, the dedup
purge) in every server pod; there is no `upm worker ingest`.
*/}}
{{- define "upm.components" -}}
ingest:
  valuesKey: ingest
  kind: server
  args: [serve, ingest]
  splitWorkers: false
  healthService: upm.ingest.v1.IngestService
profile:
  valuesKey: profile
  kind: server
  args: [serve, profile]
  splitWorkers: true
  healthService: upm.profile.v1.ProfileService
segment:
  valuesKey: segment
  kind: server
  args: [serve, segment]
  splitWorkers: true
  healthService: upm.segment.v1.SegmentService
orchestrator:
  valuesKey: orchestrator
  kind: server
  args: [serve, orchestrator]
  splitWorkers: false
  healthService: upm.orchestrator.v1.OrchestratorService
profile-worker:
  valuesKey: profileWorker
  kind: worker
  args: [worker, profile]
  healthService: ""
segment-worker:
  valuesKey: segmentWorker
  kind: worker
  args: [worker, segment]
  healthService: ""
{{- end -}}

{{- define "upm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the connection strings the chart renders from inline values. */}}
{{- define "upm.connectionsSecretName" -}}
{{- printf "%s-connections" (include "upm.fullname" .) -}}
{{- end -}}

{{- define "upm.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- include "upm.connectionsSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "upm.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretKey -}}
{{- else -}}
UPM_DATABASE_URL
{{- end -}}
{{- end -}}

{{- define "upm.redisSecretName" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecret -}}
{{- else -}}
{{- include "upm.connectionsSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "upm.redisSecretKey" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecretKey -}}
{{- else -}}
UPM_REDIS_URL
{{- end -}}
{{- end -}}

{{/* Does the chart render its own connections Secret? */}}
{{- define "upm.rendersConnectionsSecret" -}}
{{- if or (not .Values.database.existingSecret) (and .Values.redis.enabled (not .Values.redis.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/* Fail early on combinations the services would reject at start-up. */}}
{{- define "upm.validate" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "database: set database.url or database.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.redis.existingSecret) (not .Values.redis.url) -}}
{{- fail "redis: set redis.url or redis.existingSecret, or set redis.enabled=false" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (eq .Values.config.eventLog.backend "redis") -}}
{{- fail "config.eventLog.backend=redis needs redis.enabled=true" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (eq .Values.config.fatigueBackend "redis") -}}
{{- fail "config.fatigueBackend=redis needs redis.enabled=true" -}}
{{- end -}}
{{- if and .Values.ingest.ingress.enabled (not .Values.ingest.ingress.hosts) -}}
{{- fail "ingest.ingress.enabled needs at least one host in ingest.ingress.hosts" -}}
{{- end -}}
{{- $stopping := add (int .Values.preStopSleepSeconds) (ceil .Values.config.drainSeconds | int) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $stopping -}}
{{- fail (printf "terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.drainSeconds (%d)" $stopping) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt)" -}}
{{- end -}}
{{- end -}}

{{/* host:port a peer dials to reach a server component. */}}
{{- define "upm.peerAddress" -}}
{{- $root := .root -}}
{{- $service := printf "%s-%s" (include "upm.fullname" $root) .component -}}
{{- if eq $root.Values.loadBalancing.mode "clientSide" -}}
{{- printf "dns:///%s-headless.%s.svc.%s:50051" $service $root.Release.Namespace $root.Values.loadBalancing.clusterDomain -}}
{{- else -}}
{{- printf "%s:50051" $service -}}
{{- end -}}
{{- end -}}

{{/* Checksums that roll the pods when their configuration changes. */}}
{{- define "upm.configChecksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* NetworkPolicy egress to PostgreSQL, Redis, DNS and the extra rules. */}}
{{- define "upm.baseEgress" -}}
- ports:
    {{- range .Values.networkPolicy.database.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.database.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.redis.enabled }}
- ports:
    {{- range .Values.networkPolicy.redisEgress.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.redisEgress.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}
