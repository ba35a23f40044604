{{/* Name of every object: Cilium's "clustermesh-apiserver" unless overridden. */}}
{{- define "clustermesh.fullname" -}}
{{- default "clustermesh-apiserver" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clustermesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clustermesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the pods. */}}
{{- define "clustermesh.selectorLabels" -}}
app.kubernetes.io/name: clustermesh-apiserver
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clustermesh.labels" -}}
{{ include "clustermesh.selectorLabels" . }}
app.kubernetes.io/part-of: cilium
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository[:tag][@digest] of an image dict; the second argument is the default tag. */}}
{{- define "clustermesh.image" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* Where the files are, inside the containers. */}}
{{- define "clustermesh.etcdConfigFile" -}}/var/lib/cilium/etcd-config/etcd-config.yaml{{- end -}}
{{- define "clustermesh.configDir" -}}/var/lib/cilium/clustermesh{{- end -}}

{{/* host of a remote cluster's endpoint: address (bracketed if IPv6) or <name>.<domain>. */}}
{{- define "clustermesh.remoteHost" -}}
{{- $cluster := index . 0 -}}
{{- $domain := index . 1 -}}
{{- if $cluster.address -}}
{{- if contains ":" $cluster.address -}}
[{{ $cluster.address }}]
{{- else -}}
{{ $cluster.address }}
{{- end -}}
{{- else -}}
{{ $cluster.name }}.{{ $domain }}
{{- end -}}
{{- end -}}

{{/* --kvstore-opt flags: etcd.config first, then the map in key order. */}}
{{- define "clustermesh.kvstoreOpts" -}}
- --kvstore-opt=etcd.config={{ include "clustermesh.etcdConfigFile" .root }}
{{- range $key, $value := .opts }}
{{- if not (eq $key "etcd.config") }}
- {{ printf "--kvstore-opt=%s=%v" $key $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Flags the apiserver and KVStoreMesh share. */}}
{{- define "clustermesh.commonArgs" -}}
- --cluster-name={{ .Values.cluster.name }}
- --cluster-id={{ int64 .Values.cluster.id }}
- --max-connected-clusters={{ int64 .Values.maxConnectedClusters }}
- --max-txn-ops={{ int64 .Values.etcd.maxTxnOps }}
- --max-request-bytes={{ int64 .Values.etcd.maxRequestBytes }}
{{- end -}}

{{/* Health probes of a daemon container: dict "port" <port name> "values" <its values>. */}}
{{- define "clustermesh.probes" -}}
{{- $v := .values -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $v.startupProbe.periodSeconds }}
  failureThreshold: {{ $v.startupProbe.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: {{ $v.readinessProbe.periodSeconds }}
  timeoutSeconds: {{ $v.readinessProbe.timeoutSeconds }}
  failureThreshold: {{ $v.readinessProbe.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $v.livenessProbe.periodSeconds }}
  timeoutSeconds: {{ $v.livenessProbe.timeoutSeconds }}
  failureThreshold: {{ $v.livenessProbe.failureThreshold }}
{{- end -}}
