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

{{/* Where the files are, inside the containers (Cilium's paths). The etcd client
config is the image's own file; the users.yaml directory, the config directory of
KVStoreMesh and the one of Cilium's agents are volumes. */}}
{{- define "clustermesh.etcdConfigFile" -}}/var/lib/cilium/etcd-config.yaml{{- end -}}
{{- define "clustermesh.usersConfigDir" -}}/var/lib/cilium/etcd-config{{- end -}}
{{- define "clustermesh.configDir" -}}/var/lib/cilium/clustermesh{{- end -}}

{{/* The remote clusters: clustermesh.config.clusters without this cluster, as JSON
{"clusters": [...]} (read it back with fromJson); a name listed twice fails. */}}
{{- define "clustermesh.remoteClusters" -}}
{{- $seen := dict -}}
{{- $remotes := list -}}
{{- range .Values.clustermesh.config.clusters -}}
{{- if ne .name $.Values.cluster.name -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "clustermesh.config.clusters: cluster %q is listed more than once" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- $remotes = append $remotes . -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "clusters" $remotes) -}}
{{- end -}}

{{/* An etcd client config file (Cilium's format): dict "endpoint" <URL> "prefix" <path
of the TLS files without -ca.crt/.crt/.key>. */}}
{{- define "clustermesh.etcdClientConfig" -}}
endpoints:
- {{ .endpoint }}
trusted-ca-file: {{ .prefix }}-ca.crt
cert-file: {{ .prefix }}.crt
key-file: {{ .prefix }}.key
{{ end -}}

{{/* The config directory that reaches the remote clusters' etcds themselves, as JSON
{file name: base64 content}: one file per remote cluster, with the common-etcd-client.*
files (the tls.remoteSecret Secret, projected next to it) or the cluster's own tls
(<name>.etcd-client.* files, which are added). KVStoreMesh reads it, and Cilium's agents
when they connect to the remote clusters directly (KVStoreMesh off). */}}
{{- define "clustermesh.remoteConfigData" -}}
{{- $configDir := include "clustermesh.configDir" . -}}
{{- $domain := .Values.clustermesh.config.domain -}}
{{- $data := dict -}}
{{- range (include "clustermesh.remoteClusters" . | fromJson).clusters -}}
{{- $prefix := printf "%s/common-etcd-client" $configDir -}}
{{- if and .tls .tls.cert .tls.key -}}
{{- $prefix = printf "%s/%s.etcd-client" $configDir .name -}}
{{- $_ := set $data (printf "%s.etcd-client.crt" .name) .tls.cert -}}
{{- $_ := set $data (printf "%s.etcd-client.key" .name) .tls.key -}}
{{- $_ := set $data (printf "%s.etcd-client-ca.crt" .name) (required (printf "clustermesh.config.clusters: %s: tls.caCert is required with tls.cert and tls.key" .name) .tls.caCert) -}}
{{- end -}}
{{- $endpoint := printf "https://%s:%d" (include "clustermesh.remoteHost" (list . $domain)) (int64 (default 2379 .port)) -}}
{{- $config := include "clustermesh.etcdClientConfig" (dict "endpoint" $endpoint "prefix" $prefix) -}}
{{- $_ := set $data .name ($config | b64enc) -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

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

{{/* KVStoreMesh's cluster config directory: one file per remote cluster (from the config
Secret) plus the common client certificate for remote etcds. */}}
{{- define "clustermesh.kvstoremeshConfigVolume" -}}
- name: kvstoremesh-config
  projected:
    defaultMode: 0400
    sources:
      - secret:
          name: {{ .Values.clustermesh.config.secretName }}
          optional: true
      - secret:
          name: {{ .Values.tls.remoteSecret }}
          optional: true
          items:
            - key: tls.crt
              path: common-etcd-client.crt
            - key: tls.key
              path: common-etcd-client.key
            - key: ca.crt
              path: common-etcd-client-ca.crt
{{- end -}}

{{/* kvstoreMode external: the etcd client config of the agents' etcd (its TLS Secret is
mounted at /var/lib/etcd-secrets, as in Cilium's agents). */}}
{{- define "clustermesh.externalEtcdConfig" -}}
endpoints:
{{- range .Values.kvstoremesh.external.endpoints }}
  - {{ . }}
{{- end }}
trusted-ca-file: /var/lib/etcd-secrets/ca.crt
cert-file: /var/lib/etcd-secrets/tls.crt
key-file: /var/lib/etcd-secrets/tls.key
{{- end -}}
