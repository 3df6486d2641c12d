{{/*
Labels on every object's metadata: the kustomize base's part-of, and Helm's standard ones. Never on
selectors or the pod template, so a Helm upgrade and a kustomize apply select the same pods.
*/}}
{{- define "coldstart.labels" -}}
app.kubernetes.io/part-of: coldstart
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The shared settings, as the ConfigMap's data (deploy/coldstart.env's keys). */}}
{{- define "coldstart.configData" -}}
{{- $c := .Values.config -}}
{{- /* Helm reads an unquoted `gdsMode: on` as YAML 1.1's true: the daemon wants on. */}}
{{- $gdsMode := $c.gdsMode -}}
{{- if kindIs "bool" $gdsMode }}{{ $gdsMode = ternary "on" "off" $gdsMode }}{{ end -}}
{{- $data := dict
  "COLDSTART_SOURCES_ALLOW" (join "," .Values.sources.allow)
  "COLDSTART_COMPILE_CACHE_REMOTE" (toString $c.compileCacheRemote)
  "AWS_REGION" (toString $c.awsRegion)
  "COLDSTART_GDS_MODE" (toString $gdsMode)
  "COLDSTART_PLACEMENT_REQUIRE" (toString $c.placementRequire)
  "COLDSTART_ON_REFUSAL" (toString $c.onRefusal)
  "COLDSTART_EVICTION_HIGH_WATERMARK" (toString $c.evictionHighWatermark)
  "COLDSTART_EVICTION_LOW_WATERMARK" (toString $c.evictionLowWatermark)
  "COLDSTART_LOG_LEVEL" (toString $c.logLevel)
  "COLDSTART_CSI_ALLOW" (join "," .Values.csi.allow)
-}}
{{- if .Values.peers.enabled }}
{{- $_ := set $data "COLDSTART_PEER_DNS" (printf "coldstart-peers.%s.svc.%s:8476" .Release.Namespace .Values.peers.clusterDomain) }}
{{- end }}
{{- if .Values.mirror.registries }}
{{- $_ := set $data "COLDSTART_MIRROR_REGISTRIES" (join "," .Values.mirror.registries) }}
{{- end }}
{{- range $k, $v := $c.extra }}
{{- $_ := set $data $k (toString $v) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
The ConfigMap's name: like kustomize's configMapGenerator, a hash of its content in the name, so an
edit rolls the DaemonSet.
*/}}
{{- define "coldstart.configName" -}}
coldstart-config-{{ include "coldstart.configData" . | sha256sum | trunc 10 }}
{{- end }}

{{/*
A token Secret the chart generates (args: root context, Secret name): 64 hex digits (the SHA-256 of 32
random alphanumerics from crypto/rand), kept
across upgrades (lookup finds the one already installed; `helm template` has no cluster and makes a
new one each time).
*/}}
{{- define "coldstart.tokenSecret" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- $old := lookup "v1" "Secret" $ctx.Release.Namespace $name -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "coldstart.labels" $ctx | nindent 4 }}
type: Opaque
data:
  {{- if and $old $old.data (index $old.data "tokens") }}
  tokens: {{ index $old.data "tokens" }}
  {{- else }}
  tokens: {{ randAlphaNum 32 | sha256sum | b64enc }}
  {{- end }}
{{- end }}

{{/*
The objects of a YAML file kept in deploy/ and linked under files/ (args: root context, path, extra
labels), so the chart and the kustomize base share one source: each document with the chart's labels
added and deploy/'s namespace (coldstart, in metadata and in RBAC subjects) made the release's; any
other namespace stays. Comments are lost; strings, numbers and the PromQL in
them are kept as they are (the file is data here, never a template).
*/}}
{{- define "coldstart.fromFile" -}}
{{- $ctx := index . 0 -}}
{{- $extra := index . 2 -}}
{{- range $i, $doc := regexSplit "(?m)^---\\s*$" ($ctx.Files.Get (index . 1)) -1 }}
{{- $obj := fromYaml $doc }}
{{- if $obj }}
{{- $meta := $obj.metadata }}
{{- $labels := merge (dict) $extra (include "coldstart.labels" $ctx | fromYaml) ($meta.labels | default dict) }}
{{- $_ := set $meta "labels" $labels }}
{{- /* deploy/'s own namespace becomes the release's; any other (default, for Events) stays. */}}
{{- if eq ($meta.namespace | default "") "coldstart" }}
{{- $_ := set $meta "namespace" $ctx.Release.Namespace }}
{{- end }}
{{- range $obj.subjects | default list }}
{{- if eq (.namespace | default "") "coldstart" }}
{{- $_ := set . "namespace" $ctx.Release.Namespace }}
{{- end }}
{{- end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
