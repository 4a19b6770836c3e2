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

{{/* Secret holding the keys file (postwarden.keyring): the operator's, or the chart's own. */}}
{{- define "postwarden.keysSecretName" -}}
{{- default (include "postwarden.fullname" .) .Values.keys.existingSecret -}}
{{- end -}}

{{- define "postwarden.keysSecretKey" -}}
{{- if .Values.keys.existingSecret -}}{{ .Values.keys.secretKey }}{{- else -}}keys.json{{- end -}}
{{- end -}}

{{- define "postwarden.clamdAddress" -}}
{{- printf "tcp://%s:3310" (include "postwarden.componentName" (dict "root" . "component" "clamav")) -}}
{{- end -}}

{{/* Where `postwarden web` and the notifier's links send users. */}}
{{- define "postwarden.publicUrl" -}}
{{- if .Values.config.publicUrl -}}
{{- .Values.config.publicUrl -}}
{{- else -}}
{{- printf "https://%s" .Values.web.ingress.host -}}
{{- end -}}
{{- end -}}

{{/*
Process settings as a flat map, shared by the settings ConfigMap and the
migration hook (which runs before that ConfigMap exists).
*/}}
{{- define "postwarden.settings" -}}
POSTWARDEN_BOOTSTRAP_SERVERS: {{ .Values.kafka.bootstrapServers | quote }}
POSTWARDEN_TOPIC_PARTITIONS: {{ .Values.kafka.partitions | int64 | quote }}
POSTWARDEN_REPLICATION_FACTOR: {{ .Values.kafka.replicationFactor | int64 | quote }}
POSTWARDEN_CLICKHOUSE_URL: {{ .Values.clickhouse.url | quote }}
POSTWARDEN_TENANTS_FILE: "/etc/postwarden/tenants.yaml"
POSTWARDEN_DATA_DIR: "/var/lib/postwarden"
{{- /* Probes and scrapes arrive on the pod IP, not loopback. */}}
POSTWARDEN_HEALTH_HOST: "0.0.0.0"
POSTWARDEN_HEALTH_PORT: "8080"
POSTWARDEN_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
POSTWARDEN_APP_ID: {{ .Values.config.appId | quote }}
POSTWARDEN_MAX_MESSAGE_SIZE: {{ .Values.config.maxMessageSize | int64 | quote }}
{{- /* Ingest greets with it; DSNs and alerts are sent from it. */}}
POSTWARDEN_SMTP_HOSTNAME: {{ .Values.ingest.hostname | quote }}
POSTWARDEN_PUBLIC_URL: {{ include "postwarden.publicUrl" . | quote }}
POSTWARDEN_NOTIFY_FROM: {{ default (printf "postmaster@%s" .Values.ingest.hostname) .Values.config.notifyFrom | quote }}
{{- range $k, $v := .Values.config.extraSettings }}
{{ printf "POSTWARDEN_%s" (upper $k) }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Secret-backed env entries. Args: root, clickhouse (bool: this container
writes to ClickHouse), hookSecret (the migration hook's copy of the
chart-managed password).
*/}}
{{- define "postwarden.secretEnv" -}}
{{- $v := .root.Values -}}
{{- $chartSecret := default (include "postwarden.fullname" .root) .hookSecret -}}
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
{{- end -}}

{{/*
Kafka client security (postwarden/kafka_security.py) of a container with a
Kafka client. Not in the settings ConfigMap: web has no Kafka client and
neither the CA file nor the SASL password.
*/}}
{{- define "postwarden.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
- name: POSTWARDEN_KAFKA_SECURITY_PROTOCOL
  value: {{ printf "%s%s" (ternary "SASL_" "" $k.sasl.enabled) (ternary "SSL" "PLAINTEXT" $k.tls.enabled) | quote }}
{{- if $k.tls.enabled }}
- name: POSTWARDEN_KAFKA_SSL_CHECK_HOSTNAME
  value: {{ $k.tls.checkHostname | toString | quote }}
{{- if $k.tls.caSecret }}
- name: POSTWARDEN_KAFKA_SSL_CA_FILE
  value: /etc/postwarden/kafka-tls/ca.crt
{{- end }}
{{- end }}
{{- if $k.sasl.enabled }}
- name: POSTWARDEN_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: POSTWARDEN_KAFKA_SASL_USERNAME
  value: {{ $k.sasl.username | quote }}
- name: POSTWARDEN_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.passwordSecret.name }}
      key: {{ $k.sasl.passwordSecret.key }}
{{- end }}
{{- end -}}

{{/* "true" when Kafka clients need the CA bundle mounted (kafka.tls with a caSecret). */}}
{{- define "postwarden.kafkaCaMounted" -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}true{{ end -}}
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

{{/*
Volumes of a Postwarden pod. Args: root, data (true: emptyDir for DATA_DIR),
keys (true: the keys file), smtpTls (true: the STARTTLS certificate),
kafkaTls (true: the Kafka CA bundle).
*/}}
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
{{- if .keys }}
- name: keys
  secret:
    secretName: {{ include "postwarden.keysSecretName" .root }}
    defaultMode: 0440
    items:
      - key: {{ include "postwarden.keysSecretKey" .root }}
        path: keys.json
{{- end }}
{{- if .smtpTls }}
- name: smtp-tls
  secret:
    secretName: {{ .root.Values.ingest.tls.secretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- if .kafkaTls }}
- name: kafka-tls
  secret:
    secretName: {{ .root.Values.kafka.tls.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ .root.Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Mounts matching postwarden.volumes; args: keys, smtpTls, kafkaTls. */}}
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
{{- if .keys }}
- name: keys
  mountPath: /etc/postwarden/keys
  readOnly: true
{{- end }}
{{- if .smtpTls }}
- name: smtp-tls
  mountPath: /etc/postwarden/smtp-tls
  readOnly: true
{{- end }}
{{- if .kafkaTls }}
- name: kafka-tls
  mountPath: /etc/postwarden/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Env naming the mounted keys file. */}}
{{- define "postwarden.keysEnv" -}}
- name: POSTWARDEN_KEYS_FILE
  value: /etc/postwarden/keys/keys.json
{{- end -}}

{{/* Pod annotations that roll pods when their configuration changes. */}}
{{- define "postwarden.configChecksums" -}}
checksum/settings: {{ include "postwarden.settings" . | sha256sum }}
checksum/tenants: {{ toJson .Values.tenants | sha256sum }}
checksum/secrets: {{ toJson (list .Values.keys .Values.clickhouse.password .Values.ingest.tls) | sha256sum }}
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
secrets (dict for postwarden.secretEnv), mounts (dict of keys/smtpTls
booleans), lifecycle (optional container lifecycle), kafka (true: the
container has a Kafka client and gets its security settings).
*/}}
{{- define "postwarden.deployment" -}}
{{- $root := .root -}}
{{- $mounts := merge (dict "kafkaTls" (and .kafka (include "postwarden.kafkaCaMounted" $root))) (.mounts | default dict) -}}
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
            {{- if $mounts.keys }}
            {{- include "postwarden.keysEnv" $root | nindent 12 }}
            {{- end }}
            {{- if .kafka }}
            {{- include "postwarden.kafkaEnv" $root | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .lifecycle }}
          lifecycle:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- include "postwarden.healthProbes" $root | nindent 10 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- include "postwarden.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "postwarden.volumeMounts" $mounts | nindent 12 }}
      volumes:
        {{- include "postwarden.volumes" (merge (dict "root" $root "data" true) $mounts) | nindent 8 }}
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

{{/* Rule for pods of chart components on one TCP port; args: root, components, port, direction ("to"/"from"). */}}
{{- define "postwarden.podsRule" -}}
- {{ .direction }}:
    {{- range .components }}
    - podSelector:
        matchLabels:
          {{- include "postwarden.selectorLabels" (dict "root" $.root "component" .) | nindent 10 }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .port }}
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
