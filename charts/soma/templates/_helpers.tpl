{{/* Names and labels. */}}
{{- define "soma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "soma.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "soma.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "soma.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Object name of a component: (list root component). */}}
{{- define "soma.componentName" -}}
{{- printf "%s-%s" (include "soma.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "soma.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "soma.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "soma.labels" -}}
{{- $root := index . 0 -}}
{{ include "soma.selectorLabels" . }}
app.kubernetes.io/part-of: soma
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image of a pod: (list root gpu-enabled). GPU pods take the CUDA image. */}}
{{- define "soma.image" -}}
{{- $root := index . 0 -}}
{{- $img := ternary $root.Values.gpuImage $root.Values.image (index . 1) -}}
image: {{ printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) | quote }}
imagePullPolicy: {{ $img.pullPolicy }}
{{- end -}}

{{/* Stores: in-cluster or external. */}}
{{- define "soma.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s:6379" (include "soma.componentName" (list . "redis")) -}}
{{- else -}}
{{- required "redis.external.host is required when redis.enabled is false" .Values.redis.external.host -}}
{{- end -}}
{{- end -}}

{{/* redis URL of one database: (list root db). The password comes from SOMA_REDIS_PASSWORD,
     an earlier env var that Kubernetes expands in $(...) references. */}}
{{- define "soma.redisUrl" -}}
{{- $root := index . 0 -}}
{{- $scheme := "redis" -}}
{{- $auth := "" -}}
{{- if not $root.Values.redis.enabled -}}
{{- if $root.Values.redis.external.tls -}}{{- $scheme = "rediss" -}}{{- end -}}
{{- end -}}
{{- if include "soma.redisSecret" $root -}}{{- $auth = ":$(SOMA_REDIS_PASSWORD)@" -}}{{- end -}}
{{- printf "%s://%s%s/%d" $scheme $auth (include "soma.redisHost" $root) (index . 1) -}}
{{- end -}}

{{/* The Secret holding Redis's password (key: soma.redisPasswordKey): the in-cluster Redis's (the
     chart's, or redis.existingSecret), or an external Redis's existingSecret; empty = no password. */}}
{{- define "soma.redisSecret" -}}
{{- if .Values.redis.enabled -}}
{{- default (include "soma.componentName" (list . "redis")) .Values.redis.existingSecret -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "soma.redisPasswordKey" -}}
{{- ternary "password" .Values.redis.external.passwordKey .Values.redis.enabled -}}
{{- end -}}

{{- define "soma.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s:9000" (include "soma.componentName" (list . "minio")) -}}
{{- else -}}
{{- required "minio.external.endpoint is required when minio.enabled is false" .Values.minio.external.endpoint -}}
{{- end -}}
{{- end -}}

{{/* Secret with the S3 keys access_key and secret_key. */}}
{{- define "soma.apiKeysSecret" -}}
{{- default (include "soma.componentName" (list . "api-keys")) .Values.auth.apiKeysSecret -}}
{{- end -}}

{{- define "soma.servesDialogue" -}}
{{- if or (eq . "all") (eq . "dialogue") -}}true{{- end -}}
{{- end -}}

{{- define "soma.s3Secret" -}}
{{- if .Values.minio.enabled -}}
{{- default (include "soma.componentName" (list . "s3")) .Values.minio.existingSecret -}}
{{- else -}}
{{- required "minio.external.existingSecret is required when minio.enabled is false" .Values.minio.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The gRPC address of a service: (list root component). Teacher and surrogate have headless
     Services (one DNS record per ready pod): their callers dial dns:///<name>:<port> and spread
     calls over the pods with gRPC's round_robin policy instead of pinning one pod per channel. */}}
{{- define "soma.address" -}}
{{- $address := printf "%s:%d" (include "soma.componentName" (list (index . 0) (index . 1))) (int (index . 0).Values.grpcPort) -}}
{{- if include "soma.headless" (index . 1) -}}dns:///{{- end -}}{{ $address }}
{{- end -}}

{{- define "soma.headless" -}}
{{- if has . (list "teacher" "surrogate") -}}true{{- end -}}
{{- end -}}

{{/* Redis by fully qualified name (host:port), for clients outside the release's namespace
     (KEDA's operator); an external Redis as given. */}}
{{- define "soma.redisHostFqdn" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s.%s.svc.%s:6379" (include "soma.componentName" (list . "redis")) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- include "soma.redisHost" . -}}
{{- end -}}
{{- end -}}

{{/* Whether the dialogue pods serve the OpenAI-compatible HTTP door: on httpPort, unless TLS is on
     the gRPC port (the server then leaves it off; terminate TLS for HTTP at an ingress). */}}
{{- define "soma.httpOn" -}}
{{- if and .Values.httpPort (not .Values.auth.tlsSecret) -}}true{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of a soma server pod: the drain, then the grace period of the
     in-flight RPCs (server.drain_delay_s + server.grace_period_s), and a margin for the exit. */}}
{{- define "soma.serverGrace" -}}
{{- add (int .Values.drainDelaySeconds) (int .Values.gracePeriodSeconds) 15 -}}
{{- end -}}

{{/* Annotations of the ServiceAccounts the chart makes (serviceAccount.annotations, e.g. IRSA's
     eks.amazonaws.com/role-arn), indented for metadata. */}}
{{- define "soma.serviceAccountAnnotations" -}}
{{- with .Values.serviceAccount.annotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod template annotations: podAnnotations, then the component's own: (list root cfg). */}}
{{- define "soma.podAnnotations" -}}
{{- $annotations := merge (deepCopy ((index . 1).podAnnotations | default dict)) (deepCopy ((index . 0).Values.podAnnotations | default dict)) -}}
{{- with $annotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Adaptation driver: the operator when it is installed, else the dialogue drives the jobs. */}}
{{- define "soma.adaptation" -}}
{{- if and (eq .Values.mode "cluster") .Values.operator.enabled -}}operator{{- else -}}embedded{{- end -}}
{{- end -}}

{{/* Environment of a soma pod: (list root component extraEnv). Plain values are collected in
     a dict (extraEnv overrides any of them) and rendered sorted; secret references come first
     so that $(SOMA_REDIS_PASSWORD) can be expanded. */}}
{{- define "soma.env" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := $root.Values -}}
{{- $cache := $v.modelCache.path -}}
{{- $env := dict
  "SOMA_SERVER__HOST" "0.0.0.0"
  "SOMA_SERVER__PORT" (toString $v.grpcPort)
  "SOMA_SERVER__DRAIN_DELAY_S" (toString $v.drainDelaySeconds)
  "SOMA_SERVER__GRACE_PERIOD_S" (toString $v.gracePeriodSeconds)
  "SOMA_TELEMETRY__METRICS_PORT" (toString $v.metricsPort)
  "SOMA_TELEMETRY__OTLP_ENDPOINT" $v.telemetry.otlpEndpoint
  "SOMA_TELEMETRY__LOG_LEVEL" $v.logLevel
  "SOMA_TELEMETRY__LOG_FORMAT" $v.logFormat
  "SOMA_MODEL_CACHE" (printf "%s/models" $cache)
  "HF_HOME" (printf "%s/hf" $cache)
  "XDG_CACHE_HOME" (printf "%s/xdg" $cache)
  "HOME" "/tmp"
  "SOMA_TEACHER__BACKEND" $v.teacher.backend
  "SOMA_TEACHER__MODEL" $v.teacher.model
  "SOMA_TEACHER__DTYPE" $v.teacher.dtype
  "SOMA_TEACHER__REPETITION_PENALTY" (toString $v.teacher.repetitionPenalty)
  "SOMA_SURROGATE__BACKEND" $v.surrogate.backend
  "SOMA_SURROGATE__MODEL" $v.surrogate.model
  "SOMA_SURROGATE__DTYPE" $v.surrogate.dtype
  "SOMA_GATE__ENCODER" $v.gate.encoder
  "SOMA_METHOD__BUDGET" $v.jobs.budget
  "SOMA_JOBS__SHUTDOWN_WAIT_S" (toString $v.jobs.shutdownWaitSeconds)
  "SOMA_ADAPTATION__MODE" (include "soma.adaptation" $root)
-}}
{{- if include "soma.servesDialogue" $component -}}
{{- $_ := set $env "SOMA_SERVER__API_KEYS_FILE" "/etc/soma/auth/api-keys.json" -}}
{{- /* empty = off: the server leaves the HTTP door off anyway when the gRPC port serves TLS */ -}}
{{- $_ := set $env "SOMA_SERVER__HTTP_PORT" (ternary (toString $v.httpPort) "" (eq (include "soma.httpOn" $root) "true")) -}}
{{- if $v.auth.tlsSecret -}}
{{- $_ := set $env "SOMA_SERVER__TLS_CERT_FILE" "/etc/soma/tls/tls.crt" -}}
{{- $_ := set $env "SOMA_SERVER__TLS_KEY_FILE" "/etc/soma/tls/tls.key" -}}
{{- $_ := set $env "SOMA_SERVER__HEALTH_PORT" (toString $v.healthPort) -}}
{{- end -}}
{{- end -}}
{{- if eq $v.teacher.backend "openai" -}}
{{- $_ := set $env "SOMA_TEACHER__OPENAI_BASE_URL" (required "teacher.openai.baseUrl is required with backend openai" $v.teacher.openai.baseUrl) -}}
{{- end -}}
{{- if eq $v.mode "embedded" -}}
{{- /* sessions.db, adapters/, jobs/ and worker-metrics/ under the state volume */ -}}
{{- $_ := set $env "SOMA_STATE_DIR" "/var/lib/soma" -}}
{{- else -}}
{{- $_ := set $env "SOMA_SERVER__SERVICE_TOKEN_FILE" "/etc/soma/service/token" -}}
{{- $_ := set $env "SOMA_DIALOGUE__TEACHER_ADDRESS" (include "soma.address" (list $root "teacher")) -}}
{{- $_ := set $env "SOMA_ADAPTATION__SURROGATE_ADDRESS" (include "soma.address" (list $root "surrogate")) -}}
{{- $_ := set $env "SOMA_ADAPTATION__GATE_ADDRESS" (include "soma.address" (list $root "gate")) -}}
{{- $_ := set $env "SOMA_ADAPTATION__MINING_ADDRESS" (include "soma.address" (list $root "mining")) -}}
{{- $_ := set $env "SOMA_ADAPTATION__TRAINING_ADDRESS" (include "soma.address" (list $root "training")) -}}
{{- $_ := set $env "SOMA_DIALOGUE__KUBERNETES_NAMESPACE" $root.Release.Namespace -}}
{{- $_ := set $env "SOMA_DIALOGUE__SESSION_STORE" "redis" -}}
{{- $_ := set $env "SOMA_DIALOGUE__REDIS_URL" (include "soma.redisUrl" (list $root 2)) -}}
{{- $_ := set $env "SOMA_JOBS__BROKER_URL" (include "soma.redisUrl" (list $root 0)) -}}
{{- $_ := set $env "SOMA_JOBS__RESULT_BACKEND" (include "soma.redisUrl" (list $root 1)) -}}
{{- $_ := set $env "SOMA_JOBS__TEACHER_ADDRESS" (include "soma.address" (list $root "teacher")) -}}
{{- $_ := set $env "SOMA_ADAPTERS__BACKEND" "s3" -}}
{{- $_ := set $env "SOMA_ADAPTERS__S3_ENDPOINT" (include "soma.s3Endpoint" $root) -}}
{{- $_ := set $env "SOMA_ADAPTERS__S3_BUCKET" $v.adapters.bucket -}}
{{- $_ := set $env "SOMA_ADAPTERS__S3_SECURE" (ternary "false" (toString $v.minio.external.secure) $v.minio.enabled) -}}
{{- $_ := set $env "SOMA_ADAPTERS__S3_REGION" $v.minio.external.region -}}
{{- $_ := set $env "SOMA_ADAPTERS__S3_CREDENTIALS_DIR" "/var/run/secrets/soma/s3" -}}
{{- end -}}
{{- /* extraEnv (global, then the component's): NAME: "value", NAME: {value: ...} or
     NAME: {valueFrom: {...}} (a Secret's or ConfigMap's key); null drops a variable */ -}}
{{- $refs := dict -}}
{{- range $extra := list $v.extraEnv (index . 2) -}}
{{- range $name, $entry := $extra -}}
{{- $_ := unset $env $name -}}
{{- $_ := unset $refs $name -}}
{{- if kindIs "map" $entry -}}
{{- if hasKey $entry "valueFrom" -}}
{{- $_ := set $refs $name $entry.valueFrom -}}
{{- else -}}
{{- $_ := set $env $name (toString $entry.value) -}}
{{- end -}}
{{- else if not (kindIs "invalid" $entry) -}}
{{- $_ := set $env $name (toString $entry) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.mode "cluster") (include "soma.redisSecret" $root) }}
- name: SOMA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "soma.redisSecret" $root }}
      key: {{ include "soma.redisPasswordKey" $root }}
{{- end }}
{{- if and (eq $v.teacher.backend "openai") (has $component (list "teacher" "all")) }}
- name: SOMA_TEACHER__OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "teacher.openai.existingSecret is required with backend openai" $v.teacher.openai.existingSecret }}
      key: {{ $v.teacher.openai.apiKeyKey }}
{{- end }}
{{- if and $v.hfTokenSecret.name (ne $component "operator") (not (hasKey $refs "HF_TOKEN")) }}
- name: HF_TOKEN  # hub downloads of gated or private models (huggingface_hub, vLLM)
  valueFrom:
    secretKeyRef:
      name: {{ $v.hfTokenSecret.name }}
      key: {{ $v.hfTokenSecret.key }}
{{- end }}
{{- range $name, $ref := $refs }}
- name: {{ $name }}
  valueFrom: {{- toYaml $ref | nindent 4 }}
{{- end }}
{{- range $name, $value := $env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod spec shared by every soma pod: (dict root component cfg args probes healthService terminationGrace
     serviceAccount labelComponent). labelComponent: the pods' component label, when it differs from
     the serve target (embedded pods serve `all`). */}}
{{- define "soma.podSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $cfg := .cfg -}}
{{- $labelComponent := .labelComponent | default .component -}}
{{- $gpu := false -}}
{{- if $cfg.gpu }}{{ $gpu = $cfg.gpu.enabled }}{{ end -}}
{{- with $v.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ .serviceAccount | default (include "soma.componentName" (list $root "workload")) }}
automountServiceAccountToken: {{ .serviceAccount | empty | not }}
securityContext: {{- toYaml $v.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .terminationGrace | default 45 }}
{{- with ($cfg.priorityClassName | default $v.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with $cfg.topologySpreadConstraints }}
{{- /* a constraint without a labelSelector spreads the pods of this component */}}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "soma.selectorLabels" (list $root $labelComponent) | fromYaml)) }}
  {{- end }}
  - {{ toYaml $constraint | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- $nodeSelector := ternary (merge (deepCopy ($cfg.nodeSelector | default dict)) $v.gpu.nodeSelector) ($cfg.nodeSelector | default dict) $gpu }}
{{- with $nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := concat ($cfg.tolerations | default list) (ternary $v.gpu.tolerations list $gpu) }}
{{- with $tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $cfg.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and $gpu $v.gpu.runtimeClassName }}
runtimeClassName: {{ $v.gpu.runtimeClassName }}
{{- end }}
containers:
  - name: {{ .component }}
    {{- include "soma.image" (list $root $gpu) | nindent 4 }}
    {{- with .command }}
    command: {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .args }}
    args: {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .workingDir }}
    workingDir: {{ .workingDir }}
    {{- end }}
    env: {{- include "soma.env" (list $root .component ($cfg.extraEnv | default dict)) | trim | nindent 6 }}
    {{- if or .healthService .metricsOnly }}
    ports:
      {{- if .healthService }}
      - {name: grpc, containerPort: {{ $v.grpcPort }}, protocol: TCP}
      {{- if and (include "soma.servesDialogue" .component) $v.auth.tlsSecret }}
      - {name: health, containerPort: {{ $v.healthPort }}, protocol: TCP}
      {{- end }}
      {{- if and (include "soma.servesDialogue" .component) (include "soma.httpOn" $root) }}
      - {name: http, containerPort: {{ $v.httpPort }}, protocol: TCP}  # the OpenAI-compatible HTTP door
      {{- end }}
      {{- end }}
      - {name: metrics, containerPort: {{ $v.metricsPort }}, protocol: TCP}
    {{- end }}
    {{- if .healthService }}
    {{- /* kubelet's gRPC probes cannot speak TLS: a TLS dialogue pod answers them on a plaintext health-only port */}}
    {{- $probePort := ternary $v.healthPort $v.grpcPort (and (include "soma.servesDialogue" .component | eq "true") (ne $v.auth.tlsSecret "")) }}
    # gRPC health (grpc.health.v1.Health): traffic only once this service reports SERVING; the
    # startup probe allows 20 minutes for a first model download and preparation.
    startupProbe:
      grpc: {port: {{ $probePort }}, service: ""}
      periodSeconds: 10
      failureThreshold: 120
    readinessProbe:
      grpc: {port: {{ $probePort }}, service: {{ .healthService | quote }}}
      periodSeconds: 5
      failureThreshold: 2
    livenessProbe:
      grpc: {port: {{ $probePort }}, service: ""}
      periodSeconds: 20
      timeoutSeconds: 5
      failureThreshold: 3
    {{- end }}
    {{- with .httpLivenessPort }}
    livenessProbe:  # kopf's liveness endpoint
      httpGet: {path: /healthz, port: {{ . }}}
      periodSeconds: 20
      timeoutSeconds: 5
    {{- end }}
    resources:
      {{- $res := deepCopy ($cfg.resources | default dict) }}
      {{- if $gpu }}
      {{- $limits := merge (dict $v.gpu.resourceName (int $cfg.gpu.count)) ($res.limits | default dict) }}
      {{- $_ := set $res "limits" $limits }}
      {{- end }}
      {{- toYaml $res | nindent 6 }}
    securityContext: {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - {name: tmp, mountPath: /tmp}
      - {name: model-cache, mountPath: {{ $v.modelCache.path }}}
      {{- if eq $v.mode "cluster" }}
      - {name: s3-credentials, mountPath: /var/run/secrets/soma/s3, readOnly: true}
      - {name: service-token, mountPath: /etc/soma/service, readOnly: true}
      {{- end }}
      {{- if eq .component "all" }}
      - {name: state, mountPath: /var/lib/soma}
      {{- end }}
      {{- if include "soma.servesDialogue" .component }}
      - {name: api-keys, mountPath: /etc/soma/auth, readOnly: true}
      {{- if $v.auth.tlsSecret }}
      - {name: tls, mountPath: /etc/soma/tls, readOnly: true}
      {{- end }}
      {{- end }}
      {{- if $gpu }}
      - {name: dshm, mountPath: /dev/shm}
      {{- end }}
      {{- with concat ($v.extraVolumeMounts | default list) ($cfg.extraVolumeMounts | default list) }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {sizeLimit: 2Gi}
  - name: model-cache
    {{- if $v.modelCache.persistence.enabled }}
    persistentVolumeClaim:
      claimName: {{ $v.modelCache.persistence.existingClaim | default (include "soma.componentName" (list $root "models")) }}
    {{- else }}
    emptyDir: {sizeLimit: {{ $v.modelCache.sizeLimit }}}
    {{- end }}
  {{- if eq $v.mode "cluster" }}
  - name: service-token
    secret:
      secretName: {{ $v.auth.serviceTokenSecret | default (include "soma.componentName" (list $root "service-token")) }}
      items:
        - {key: token, path: token}
  - name: s3-credentials
    secret:
      secretName: {{ include "soma.s3Secret" $root }}
      items:
        - {key: access_key, path: access_key}
        - {key: secret_key, path: secret_key}
  {{- end }}
  {{- if include "soma.servesDialogue" .component }}
  - name: api-keys
    secret:
      secretName: {{ include "soma.apiKeysSecret" $root }}
      items:
        - {key: api-keys.json, path: api-keys.json}
  {{- if $v.auth.tlsSecret }}
  - name: tls
    secret:
      secretName: {{ $v.auth.tlsSecret }}
      items:
        - {key: tls.crt, path: tls.crt}
        - {key: tls.key, path: tls.key}
  {{- end }}
  {{- end }}
  {{- if eq .component "all" }}
  - name: state
    {{- if $cfg.persistence.enabled }}
    persistentVolumeClaim:
      claimName: {{ $cfg.persistence.existingClaim | default (include "soma.componentName" (list $root "state")) }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  {{- end }}
  {{- if $gpu }}
  - name: dshm
    emptyDir: {medium: Memory, sizeLimit: {{ $v.gpu.shmSize }}}
  {{- end }}
  {{- with concat ($v.extraVolumes | default list) ($cfg.extraVolumes | default list) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* One gRPC service: Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler.
     (list root component healthService [serviceAccount]). */}}
{{- define "soma.grpcService" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $cfg := index $root.Values $component -}}
{{- $name := include "soma.componentName" (list $root $component) -}}
{{- $target := ternary "all" $component (eq $component "embedded") -}}
{{- $autoscale := false -}}
{{- if $cfg.autoscaling }}{{ $autoscale = $cfg.autoscaling.enabled }}{{ end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels: {{- include "soma.labels" (list $root $component) | nindent 4 }}
spec:
  {{- if not $autoscale }}
  replicas: {{ $cfg.replicas }}
  {{- end }}
  {{- if eq $component "embedded" }}
  strategy: {type: Recreate}  # one pod owns the SQLite file and the adapter folder
  {{- end }}
  selector:
    matchLabels: {{- include "soma.selectorLabels" (list $root $component) | nindent 6 }}
  template:
    metadata:
      labels: {{- include "soma.labels" (list $root $component) | nindent 8 }}
      {{- with include "soma.podAnnotations" (list $root $cfg) | trim }}{{ . | nindent 6 }}{{ end }}
    spec:
      {{- include "soma.podSpec" (dict "root" $root "component" $target "labelComponent" $component "cfg" $cfg
            "args" (list "serve" "--target" $target) "healthService" (index . 2)
            "serviceAccount" (ternary (index . (sub (len .) 1)) "" (eq (len .) 4))
            "terminationGrace" (include "soma.serverGrace" $root)
            "workingDir" (ternary "/var/lib/soma" "" (eq $target "all"))) | trim | nindent 6 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "soma.labels" (list $root $component) | nindent 4 }}
    soma.dev/metrics: "true"
  {{- with ($cfg.service | default dict).annotations }}
  annotations: {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ ($cfg.service | default dict).type | default "ClusterIP" }}
  {{- if include "soma.headless" $component }}
  clusterIP: None  # headless: callers resolve every ready pod and balance turns over them (round_robin)
  {{- end }}
  selector: {{- include "soma.selectorLabels" (list $root $component) | nindent 4 }}
  ports:
    - {name: grpc, port: {{ $root.Values.grpcPort }}, targetPort: grpc, protocol: TCP, appProtocol: grpc}
    {{- if and (include "soma.servesDialogue" $target) (include "soma.httpOn" $root) }}
    - {name: http, port: {{ $root.Values.httpPort }}, targetPort: http, protocol: TCP, appProtocol: http}
    {{- end }}
    - {name: metrics, port: {{ $root.Values.metricsPort }}, targetPort: metrics, protocol: TCP}
{{- if and $cfg.pdb $cfg.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels: {{- include "soma.labels" (list $root $component) | nindent 4 }}
spec:
  maxUnavailable: {{ $cfg.pdb.maxUnavailable }}
  selector:
    matchLabels: {{- include "soma.selectorLabels" (list $root $component) | nindent 6 }}
{{- end }}
{{- if $autoscale }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels: {{- include "soma.labels" (list $root $component) | nindent 4 }}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ $name }}}
  minReplicas: {{ $cfg.autoscaling.minReplicas }}
  maxReplicas: {{ $cfg.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $cfg.autoscaling.targetCPUUtilizationPercentage }}}
{{- end }}
{{- end -}}

{{/* Whether a component of the cluster layout is rendered: (list root component). */}}
{{- define "soma.on" -}}
{{- if and (eq (index . 0).Values.mode "cluster") (index (index . 0).Values (index . 1)).enabled -}}true{{- end -}}
{{- end -}}
