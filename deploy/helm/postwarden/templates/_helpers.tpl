{{- define "postwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "postwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>. */}}
{{- define "postwarden.componentName" -}}
{{- printf "%s-%s" (include "postwarden.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "postwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "postwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: postwarden
{{- end -}}

{{- define "postwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postwarden.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "postwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "postwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "postwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "postwarden.keysSecretName" -}}
{{- default (include "postwarden.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "postwarden.clamavAddress" -}}
{{- printf "%s:3310" (include "postwarden.componentName" (dict "root" . "component" "clamav")) -}}
{{- end -}}

{{/*
Process settings as a flat map, shared by the settings ConfigMap and the
migration hook (which runs before that ConfigMap exists).
*/}}
{{- define "postwarden.settings" -}}
POSTWARDEN_BOOTSTRAP_SERVERS: {{ .Values.kafka.bootstrapServers | quote }}
POSTWARDEN_TOPIC_PARTITIONS: {{ .Values.kafka.partitions | int64 | quote }}
POSTWARDEN_REPLICATION_FACTOR: {{ .Values.kafka.replicationFactor | int64 | quote }}
POSTWARDEN_KAFKA_TLS: {{ .Values.kafka.tls.enabled | quote }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
POSTWARDEN_KAFKA_TLS_CA_FILE: "/etc/postwarden/kafka-ca/ca.crt"
{{- end }}
{{- if .Values.kafka.sasl.enabled }}
POSTWARDEN_KAFKA_SASL_MECHANISM: {{ .Values.kafka.sasl.mechanism | quote }}
POSTWARDEN_KAFKA_SASL_USERNAME: {{ .Values.kafka.sasl.username | quote }}
{{- end }}
POSTWARDEN_CLICKHOUSE_URL: {{ .Values.clickhouse.url | quote }}
POSTWARDEN_TENANTS_FILE: "/etc/postwarden/tenants.yaml"
POSTWARDEN_DATA_DIR: "/var/lib/postwarden"
POSTWARDEN_HEALTH_PORT: "8080"
POSTWARDEN_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
POSTWARDEN_APP_ID: {{ .Values.config.appId | quote }}
POSTWARDEN_MAX_MESSAGE_SIZE: {{ .Values.config.maxMessageSize | int64 | quote }}
{{- if .Values.clamav.enabled }}
POSTWARDEN_CLAMAV_ADDRESS: {{ include "postwarden.clamavAddress" . | quote }}
{{- end }}
{{- range $k, $v := .Values.config.extraSettings }}
{{ printf "POSTWARDEN_%s" (upper $k) }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Secret-backed env entries. Args: root, and booleans clickhouse, quarantine,
session choosing which secrets this container gets (each only what it uses);
hookSecret names the migration hook's copy of the chart-managed passwords.
*/}}
{{- define "postwarden.secretEnv" -}}
{{- $v := .root.Values -}}
{{- $chartSecret := default (include "postwarden.fullname" .root) .hookSecret -}}
{{- if $v.kafka.sasl.enabled }}
- name: POSTWARDEN_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- if $v.kafka.sasl.passwordSecret.name }}
      name: {{ $v.kafka.sasl.passwordSecret.name }}
      key: {{ $v.kafka.sasl.passwordSecret.key }}
      {{- else }}
      name: {{ $chartSecret }}
      key: kafka-sasl-password
      {{- end }}
{{- end }}
{{- if and .clickhouse (or $v.clickhouse.passwordSecret.name $v.clickhouse.password) }}
- name: POSTWARDEN_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- if $v.clickhouse.passwordSecret.name }}
      name: {{ $v.clickhouse.passwordSecret.name }}
      key: {{ $v.clickhouse.passwordSecret.key }}
      {{- else }}
      name: {{ $chartSecret }}
      key: clickhouse-password
      {{- end }}
{{- end }}
{{- if .quarantine }}
- name: POSTWARDEN_QUARANTINE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "postwarden.keysSecretName" .root }}
      key: quarantine-key
- name: POSTWARDEN_QUARANTINE_PREVIOUS_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "postwarden.keysSecretName" .root }}
      key: quarantine-previous-keys
      optional: true
{{- end }}
{{- if .session }}
- name: POSTWARDEN_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "postwarden.keysSecretName" .root }}
      key: session-secret
{{- end }}
{{- end -}}

{{/* Env every Postwarden container gets besides the settings ConfigMap. */}}
{{- define "postwarden.podEnv" -}}
- name: POSTWARDEN_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{- define "postwarden.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end -}}

{{/* Volumes every Postwarden pod mounts; args: root, data (true: emptyDir for DATA_DIR). */}}
{{- define "postwarden.volumes" -}}
- name: tmp
  emptyDir: {}
- name: tenants
  configMap:
    name: {{ include "postwarden.fullname" .root }}-tenants
{{- if .data }}
- name: data
  emptyDir: {}
{{- end }}
{{- if and .root.Values.kafka.tls.enabled .root.Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .root.Values.kafka.tls.caSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "postwarden.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- /* A subPath mount never sees ConfigMap updates; the checksum/tenants annotation rolls the pods instead. */}}
- name: tenants
  mountPath: /etc/postwarden/tenants.yaml
  subPath: tenants.yaml
  readOnly: true
- name: data
  mountPath: /var/lib/postwarden
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/postwarden/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod annotations that roll pods when their configuration changes. */}}
{{- define "postwarden.configChecksums" -}}
checksum/settings: {{ include "postwarden.settings" . | sha256sum }}
checksum/tenants: {{ toJson .Values.tenants | sha256sum }}
checksum/secrets: {{ toJson (list .Values.secrets .Values.clickhouse.password .Values.kafka.sasl.password) | sha256sum }}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end -}}

{{/* Scheduling fields; args: root, component, values. */}}
{{- define "postwarden.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.spreadAcrossNodes }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "postwarden.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{- define "postwarden.healthProbes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/*
A stateless Postwarden Deployment. Args: root, component, values, args,
ports (extra container ports besides health), env (extra env list),
secrets (dict for postwarden.secretEnv).
*/}}
{{- define "postwarden.deployment" -}}
{{- $root := .root -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "postwarden.componentName" $ctx }}
  labels:
    {{- include "postwarden.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and .values.autoscaling .values.autoscaling.enabled) }}
  replicas: {{ .values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "postwarden.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "postwarden.selectorLabels" $ctx | nindent 8 }}
      annotations:
        {{- include "postwarden.configChecksums" $root | nindent 8 }}
        {{- with .values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "postwarden.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
      {{- include "postwarden.scheduling" (dict "root" $root "component" .component "values" .values) | trim | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "postwarden.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: {{ toJson .args }}
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .containerPort }}
              protocol: TCP
            {{- end }}
            - name: health
              containerPort: 8080
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "postwarden.fullname" $root }}-settings
          env:
            {{- include "postwarden.podEnv" $root | nindent 12 }}
            {{- with include "postwarden.secretEnv" (merge (dict "root" $root) .secrets) | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "postwarden.healthProbes" $root | nindent 10 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- include "postwarden.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "postwarden.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "postwarden.volumes" (dict "root" $root "data" true) | nindent 8 }}
{{- end -}}

{{/* NetworkPolicy egress rules. */}}
{{- define "postwarden.egressTo" -}}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- with .peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}

{{- define "postwarden.egressDNS" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "postwarden.egressKafka" -}}
{{- include "postwarden.egressTo" .Values.kafka.networkPolicy }}
{{- end -}}

{{- define "postwarden.egressClickhouse" -}}
{{- include "postwarden.egressTo" .Values.clickhouse.networkPolicy }}
{{- end -}}

{{- define "postwarden.ingressMetrics" -}}
{{- include "postwarden.ingressFrom" (dict "from" .Values.networkPolicy.metricsFrom "port" 8080) -}}
{{- end -}}

{{/*
One NetworkPolicy isolating a component both ways. Args: root, component,
ingress and egress (rendered YAML rule lists; empty denies that direction),
optional annotations.
*/}}
{{- define "postwarden.networkPolicy" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "postwarden.componentName" $ctx }}
  labels:
    {{- include "postwarden.labels" $ctx | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  podSelector:
    matchLabels:
      {{- include "postwarden.selectorLabels" $ctx | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- if trim .ingress }}
  ingress:
    {{- .ingress | nindent 4 }}
  {{- else }}
  ingress: []
  {{- end }}
  {{- if trim .egress }}
  egress:
    {{- .egress | nindent 4 }}
  {{- else }}
  egress: []
  {{- end }}
{{- end -}}

{{/* Ingress on one TCP port; args: from (peers; empty: any source), port. */}}
{{- define "postwarden.ingressFrom" -}}
- ports:
    - protocol: TCP
      port: {{ .port }}
  {{- with .from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
