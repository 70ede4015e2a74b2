{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.tier }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The upstreams the config lists, as a YAML list: `upstreams` from the values, or, for a node tier chained to a
central tier (node.central.url), one upstream per registry, each a Portcullis (kind: portcullis) at that url.
*/}}
{{- define "portcullis.upstreams" -}}
{{- if and (eq .Values.tier "node") .Values.node.central.url -}}
{{- $c := .Values.node.central -}}
{{- $ups := list -}}
{{- range $c.registries -}}
{{- $u := dict "name" (regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-") "registry" . "url" $c.url "kind" "portcullis" "recheck" $c.recheck -}}
{{- with $c.credentials -}}{{- $_ := set $u "credentials" . -}}{{- end -}}
{{- with $c.ca -}}{{- $_ := set $u "ca" . -}}{{- end -}}
{{- with $c.clientCertificate -}}{{- $_ := set $u "clientCertificate" . -}}{{- end -}}
{{- $ups = append $ups $u -}}
{{- end -}}
{{- toYaml $ups -}}
{{- else -}}
{{- toYaml .Values.upstreams -}}
{{- end -}}
{{- end -}}

{{/* Fail early on combinations that would deploy something broken or unsafe. */}}
{{- define "portcullis.validate" -}}
{{- if not (has .Values.tier (list "node" "central")) -}}
{{- fail (printf "tier must be node or central, not %q" .Values.tier) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.tls.clientCA.secretName (not .Values.tls.enabled) -}}
{{- fail "tls.clientCA needs tls.enabled" -}}
{{- end -}}
{{- if not (has .Values.tls.clientAuth (list "require" "optional")) -}}
{{- fail (printf "tls.clientAuth must be require or optional, not %q" .Values.tls.clientAuth) -}}
{{- end -}}
{{- if and .Values.tls.clientCA.secretName (eq .Values.tls.clientAuth "require") (not .Values.operator.port) -}}
{{- fail "tls.clientCA with clientAuth require: the registry listener then requires client certificates, which the kubelet's probes and Prometheus do not present; set operator.port (a plain-HTTP listener for health and metrics)" -}}
{{- end -}}
{{- if and (eq .Values.tier "node") .Values.serviceMonitor.enabled (not .Values.operator.port) -}}
{{- fail "serviceMonitor on the node tier needs operator.port: the registry listener is on the node's loopback, out of Prometheus' reach" -}}
{{- end -}}
{{- if and (eq .Values.tier "node") .Values.networkPolicy.enabled -}}
{{- fail "networkPolicy: NetworkPolicies do not apply to host-network pods (the node tier); it listens on the node's loopback only" -}}
{{- end -}}
{{- if and (eq .Values.tier "node") (not (has .Values.storage.type (list "hostPath" "emptyDir"))) -}}
{{- fail "storage.type for the node tier: hostPath or emptyDir" -}}
{{- end -}}
{{- if and (eq .Values.tier "central") (not (has .Values.storage.type (list "emptyDir" "persistentVolumeClaim"))) -}}
{{- fail "storage.type for the central tier: emptyDir or persistentVolumeClaim" -}}
{{- end -}}
{{- if and (eq .Values.storage.type "persistentVolumeClaim") (not .Values.storage.existingClaim) -}}
{{- fail "storage.type persistentVolumeClaim needs storage.existingClaim" -}}
{{- end -}}
{{- if and (eq .Values.tier "central") (eq .Values.storage.type "persistentVolumeClaim") (gt (int .Values.replicas) 1) -}}
{{- fail "storage.existingClaim holds one cache (one SQLite file): use replicas: 1, or emptyDir for several replicas" -}}
{{- end -}}
{{- $sources := 0 -}}
{{- range (list .Values.policy.bundleUrl .Values.policy.opaUrl) -}}{{- if . -}}{{- $sources = add1 $sources -}}{{- end -}}{{- end -}}
{{- if gt $sources 1 -}}
{{- fail "policy: give bundleUrl or opaUrl, not both" -}}
{{- end -}}
{{- if and .Values.image.digest (not (regexMatch "^sha256:[a-f0-9]{64}$" .Values.image.digest)) -}}
{{- fail (printf "image.digest must be sha256:<64 hex digits>, not %q" .Values.image.digest) -}}
{{- end -}}
{{- if and (eq .Values.tier "node") (not .Values.image.digest) -}}
{{- fail "image.digest: the node tier pins its image by digest (the kubelet pulls it while the node instance is being replaced; a tag can move)" -}}
{{- end -}}
{{- if and (eq .Values.tier "node") .Values.node.central.url (not .Values.node.central.registries) -}}
{{- fail "node.central.url needs node.central.registries: the registries the node sends to the central tier" -}}
{{- end -}}
{{- if and .Values.node.central.url (ne .Values.tier "node") -}}
{{- fail "node.central is for the node tier" -}}
{{- end -}}
{{- if .Values.sharedState.enabled -}}
{{- if ne .Values.tier "central" -}}
{{- fail "sharedState is for the central tier" -}}
{{- end -}}
{{- if not .Values.sharedState.existingSecret -}}
{{- fail "sharedState.enabled needs sharedState.existingSecret (the Redis URL and the S3 keys never go into values)" -}}
{{- end -}}
{{- if not .Values.sharedState.s3.bucket -}}
{{- fail "sharedState.s3.bucket: the bucket the replicas share" -}}
{{- end -}}
{{- if not .Values.sharedState.keys.redisSigningKey -}}
{{- fail "sharedState.keys.redisSigningKey: the Secret key of the HMAC key that signs shared decisions (storage.redis.signingKey)" -}}
{{- end -}}
{{- if ne (empty .Values.sharedState.keys.s3AccessKeyId) (empty .Values.sharedState.keys.s3SecretAccessKey) -}}
{{- fail "sharedState.keys: give both s3AccessKeyId and s3SecretAccessKey, or neither" -}}
{{- end -}}
{{- end -}}
{{- range (include "portcullis.upstreams" . | fromYamlArray) -}}
{{- if and .credentials (not .credentials.existingSecret) -}}
{{- fail (printf "upstreams %s: credentials need existingSecret (passwords never go into values)" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The scheme the registry listener speaks. */}}
{{- define "portcullis.scheme" -}}
{{- if .Values.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/*
The config file, built as a map and written with toYaml, so that extraConfig merges into it key by key and the
result is always one valid YAML document.
*/}}
{{- define "portcullis.config" -}}
{{- $listenHost := ternary "127.0.0.1" "0.0.0.0" (eq .Values.tier "node") -}}
{{- $c := dict
  "listen" (printf "%s:%d" $listenHost (int .Values.port))
  "dataDir" "/var/lib/portcullis"
  "cache" .Values.cache
  "decisionLog" .Values.decisionLog
  "log" (dict "level" .Values.logLevel)
  "shutdownGrace" .Values.shutdownGrace
-}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" "/etc/portcullis/tls/tls.crt" "key" "/etc/portcullis/tls/tls.key" -}}
{{- if .Values.tls.clientCA.secretName -}}
{{- $_ := set $tls "clientCA" (printf "/etc/portcullis/client-ca/%s" .Values.tls.clientCA.key) -}}
{{- $_ := set $tls "clientAuth" .Values.tls.clientAuth -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- /* The node tier's operator listener binds the node's address, known only at run time: an env override sets it. */ -}}
{{- if and .Values.operator.port (eq .Values.tier "central") -}}
{{- $_ := set $c "operatorListen" (printf "0.0.0.0:%d" (int .Values.operator.port)) -}}
{{- end -}}
{{- $ups := list -}}
{{- range (include "portcullis.upstreams" . | fromYamlArray) -}}
{{- $u := dict "name" .name "registry" .registry "url" .url -}}
{{- with .aliases -}}{{- $_ := set $u "aliases" . -}}{{- end -}}
{{- range $k, $v := . -}}
{{- if not (has $k (list "name" "registry" "url" "aliases" "credentials" "ca" "clientCertificate")) -}}{{- $_ := set $u $k $v -}}{{- end -}}
{{- end -}}
{{- if .credentials -}}
{{- $dir := printf "/etc/portcullis/upstreams/%s/credentials" .name -}}
{{- $cred := dict "password" (dict "file" (printf "%s/password" $dir)) -}}
{{- if .credentials.username -}}
{{- $_ := set $cred "username" .credentials.username -}}
{{- else -}}
{{- $_ := set $cred "usernameFrom" (dict "file" (printf "%s/username" $dir)) -}}
{{- end -}}
{{- $_ := set $u "credentials" $cred -}}
{{- end -}}
{{- if .ca -}}
{{- $_ := set $u "ca" (printf "/etc/portcullis/upstreams/%s/ca/ca.crt" .name) -}}
{{- end -}}
{{- if .clientCertificate -}}
{{- $dir := printf "/etc/portcullis/upstreams/%s/client" .name -}}
{{- $_ := set $u "clientCertificate" (dict "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir)) -}}
{{- end -}}
{{- $ups = append $ups $u -}}
{{- end -}}
{{- $_ := set $c "upstreams" $ups -}}
{{- if and (eq .Values.tier "node") .Values.node.central.url -}}
{{- $_ := set $c "defaultUpstream" (first $ups).name -}}
{{- else -}}
{{- with .Values.defaultUpstream -}}{{- $_ := set $c "defaultUpstream" . -}}{{- end -}}
{{- end -}}
{{- /* The node tier's surge pod starts on the same address and cache directory before the old one stops. */ -}}
{{- if eq .Values.tier "node" -}}
{{- $_ := set $c "reusePort" true -}}
{{- end -}}
{{- if .Values.sharedState.enabled -}}
{{- $s := .Values.sharedState -}}
{{- $dir := "/etc/portcullis/shared-state" -}}
{{- $s3 := deepCopy $s.s3 -}}
{{- if $s.keys.s3AccessKeyId -}}
{{- $_ := set $s3 "credentials" (dict "accessKeyId" (dict "file" (printf "%s/s3-access-key-id" $dir)) "secretAccessKey" (dict "file" (printf "%s/s3-secret-access-key" $dir))) -}}
{{- end -}}
{{- $redis := deepCopy $s.redis -}}
{{- if $s.keys.redisPassword -}}
{{- $_ := set $redis "password" (dict "file" (printf "%s/redis-password" $dir)) -}}
{{- end -}}
{{- if $s.keys.redisSentinelPassword -}}
{{- $_ := set $redis "sentinelPassword" (dict "file" (printf "%s/redis-sentinel-password" $dir)) -}}
{{- end -}}
{{- $_ := set $redis "signingKey" (dict "file" (printf "%s/redis-signing-key" $dir)) -}}
{{- /* Without sentinels or cluster in sharedState.redis, redis.url comes from the Secret through
       PORTCULLIS__storage__redis__url (the container's env). */ -}}
{{- $_ := set $c "storage" (dict "blobs" "s3" "s3" $s3 "meta" "redis" "redis" $redis) -}}
{{- end -}}
{{- $policy := dict "pollInterval" .Values.policy.pollInterval "settings" .Values.policy.settings -}}
{{- if .Values.policy.opaUrl -}}
{{- $_ := set $policy "opaUrl" .Values.policy.opaUrl -}}
{{- else if .Values.policy.bundleUrl -}}
{{- $_ := set $policy "bundleUrl" .Values.policy.bundleUrl -}}
{{- else -}}
{{- $_ := set $policy "bundleFile" .Values.policy.bundleFile -}}
{{- end -}}
{{- $_ := set $c "policy" $policy -}}
{{- with .Values.auth -}}{{- $_ := set $c "auth" . -}}{{- end -}}
{{- $merged := mustMergeOverwrite (dict) $c (deepCopy .Values.extraConfig) -}}
{{- toYaml $merged -}}
{{- end -}}
