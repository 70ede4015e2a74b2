{{/* The pod both tiers run: the proxy container, its volumes and the security settings. */}}

{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{- define "portcullis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities: { drop: [ALL] }
seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{/*
Probes: the operator listener when there is one (plain HTTP), else the registry listener. By number on the node
tier, which declares no container ports (see values node.updateStrategy).
*/}}
{{- define "portcullis.probes" -}}
{{- $port := ternary "operator" "registry" (gt (int .Values.operator.port) 0) -}}
{{- if eq .Values.tier "node" -}}
{{- $port = ternary (int .Values.operator.port) (int .Values.port) (gt (int .Values.operator.port) 0) -}}
{{- end -}}
{{- $scheme := ternary "HTTP" (ternary "HTTPS" "HTTP" .Values.tls.enabled) (gt (int .Values.operator.port) 0) -}}
{{- $host := "" -}}
{{- if and (eq .Values.tier "node") (not .Values.operator.port) }}{{ $host = "127.0.0.1" }}{{ end -}}
startupProbe:
  httpGet: { path: /readyz, port: {{ $port }}, scheme: {{ $scheme }}{{ with $host }}, host: {{ . }}{{ end }} }
  periodSeconds: 2
  failureThreshold: 60
readinessProbe:
  httpGet: { path: /readyz, port: {{ $port }}, scheme: {{ $scheme }}{{ with $host }}, host: {{ . }}{{ end }} }
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet: { path: /healthz, port: {{ $port }}, scheme: {{ $scheme }}{{ with $host }}, host: {{ . }}{{ end }} }
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{- define "portcullis.container" -}}
- name: portcullis
  image: {{ include "portcullis.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "--config", "/etc/portcullis/config/portcullis.yaml"]
  {{- if or .Values.extraEnv (and (eq .Values.tier "node") .Values.operator.port) .Values.sharedState.enabled }}
  env:
    {{- if and .Values.sharedState.enabled (not .Values.sharedState.redis.sentinels) (not .Values.sharedState.redis.cluster) }}
    # The Redis URL from the Secret (config storage.redis.url), through the config's environment override.
    - name: PORTCULLIS__storage__redis__url
      valueFrom: { secretKeyRef: { name: {{ .Values.sharedState.existingSecret }}, key: {{ .Values.sharedState.keys.redisUrl }} } }
    {{- end }}
    {{- if and (eq .Values.tier "node") .Values.operator.port }}
    # On the host network: the operator listener binds the node's address, not every address of the node.
    - name: HOST_IP
      valueFrom: { fieldRef: { fieldPath: status.hostIP } }
    - name: PORTCULLIS__operatorListen
      value: "$(HOST_IP):{{ .Values.operator.port }}"
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if ne .Values.tier "node" }}
  ports:
    - { name: registry, containerPort: {{ .Values.port }}, protocol: TCP }
    {{- if .Values.operator.port }}
    - { name: operator, containerPort: {{ .Values.operator.port }}, protocol: TCP }
    {{- end }}
  {{- end }}
  {{- include "portcullis.probes" . | nindent 2 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- include "portcullis.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - { name: config, mountPath: /etc/portcullis/config, readOnly: true }
    - { name: cache, mountPath: /var/lib/portcullis }
    # The root filesystem is read-only; SQLite and Node may want a scratch directory.
    - { name: tmp, mountPath: /tmp }
    {{- if .Values.tls.enabled }}
    - { name: tls, mountPath: /etc/portcullis/tls, readOnly: true }
    {{- end }}
    {{- if .Values.tls.clientCA.secretName }}
    - { name: client-ca, mountPath: /etc/portcullis/client-ca, readOnly: true }
    {{- end }}
    {{- if .Values.sharedState.enabled }}
    - { name: shared-state, mountPath: /etc/portcullis/shared-state, readOnly: true }
    {{- end }}
    {{- range (include "portcullis.upstreams" . | fromYamlArray) }}
    {{- if .credentials }}
    - { name: {{ printf "up-%s-cred" .name | replace "_" "-" | trunc 63 | trimSuffix "-" }}, mountPath: /etc/portcullis/upstreams/{{ .name }}/credentials, readOnly: true }
    {{- end }}
    {{- if .ca }}
    - { name: {{ printf "up-%s-ca" .name | replace "_" "-" | trunc 63 | trimSuffix "-" }}, mountPath: /etc/portcullis/upstreams/{{ .name }}/ca, readOnly: true }
    {{- end }}
    {{- if .clientCertificate }}
    - { name: {{ printf "up-%s-cert" .name | replace "_" "-" | trunc 63 | trimSuffix "-" }}, mountPath: /etc/portcullis/upstreams/{{ .name }}/client, readOnly: true }
    {{- end }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "portcullis.volumes" -}}
- name: config
  configMap: { name: {{ include "portcullis.fullname" . }} }
- name: tmp
  emptyDir: { sizeLimit: 256Mi }
- name: cache
  {{- if eq .Values.storage.type "hostPath" }}
  hostPath: { path: {{ .Values.storage.hostPath }}, type: DirectoryOrCreate }
  {{- else if eq .Values.storage.type "persistentVolumeClaim" }}
  persistentVolumeClaim: { claimName: {{ .Values.storage.existingClaim }} }
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.storage.sizeLimit }}
    {{- with .Values.storage.medium }}
    medium: {{ . }}
    {{- end }}
  {{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret: { secretName: {{ .Values.tls.secretName }}, items: [{ key: tls.crt, path: tls.crt }, { key: tls.key, path: tls.key }] }
{{- end }}
{{- if .Values.tls.clientCA.secretName }}
- name: client-ca
  secret: { secretName: {{ .Values.tls.clientCA.secretName }}, items: [{ key: {{ .Values.tls.clientCA.key }}, path: {{ .Values.tls.clientCA.key }} }] }
{{- end }}
{{- if .Values.sharedState.enabled }}
{{- $k := .Values.sharedState.keys }}
- name: shared-state
  secret:
    secretName: {{ .Values.sharedState.existingSecret }}
    items:
      {{- if $k.s3AccessKeyId }}
      - { key: {{ $k.s3AccessKeyId }}, path: s3-access-key-id }
      - { key: {{ $k.s3SecretAccessKey }}, path: s3-secret-access-key }
      {{- end }}
      {{- if $k.redisPassword }}
      - { key: {{ $k.redisPassword }}, path: redis-password }
      {{- end }}
      {{- if $k.redisSentinelPassword }}
      - { key: {{ $k.redisSentinelPassword }}, path: redis-sentinel-password }
      {{- end }}
      - { key: {{ $k.redisSigningKey }}, path: redis-signing-key }
{{- end }}
{{- range $u := (include "portcullis.upstreams" . | fromYamlArray) }}
{{- with $u.credentials }}
- name: {{ printf "up-%s-cred" $u.name | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ .existingSecret }}
    items:
      - { key: {{ default "password" .passwordKey }}, path: password }
      {{- if not .username }}
      - { key: {{ default "username" .usernameKey }}, path: username }
      {{- end }}
{{- end }}
{{- with $u.ca }}
- name: {{ printf "up-%s-ca" $u.name | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  secret: { secretName: {{ .existingSecret }}, items: [{ key: {{ default "ca.crt" .key }}, path: ca.crt }] }
{{- end }}
{{- with $u.clientCertificate }}
- name: {{ printf "up-%s-cert" $u.name | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  secret: { secretName: {{ .existingSecret }}, items: [{ key: tls.crt, path: tls.crt }, { key: tls.key, path: tls.key }] }
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
