{{/*
Names and labels. Every object carries the app.kubernetes.io/* labels; the
pods are selected by name and instance only, which never change on upgrade.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "meshlet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: fullnameOverride, else "<release>-<name>" (just the
release when it already contains the name), at most 63 characters. */}}
{{- define "meshlet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "meshlet-0.1.0", for the helm.sh/chart label. */}}
{{- define "meshlet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "meshlet.labels" -}}
helm.sh/chart: {{ include "meshlet.chart" . }}
{{ include "meshlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshlet
{{- end }}

{{/* Labels that select the agents' pods. */}}
{{- define "meshlet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshlet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "meshlet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshlet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: by digest when one is given, else by tag (default: appVersion). */}}
{{- define "meshlet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The headless Service the agents find their peers by. */}}
{{- define "meshlet.peersServiceName" -}}
{{- printf "%s-peers" (include "meshlet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret with the peer keys: the user's, else the chart's. */}}
{{- define "meshlet.keySecretName" -}}
{{- default (printf "%s-cluster-keys" (include "meshlet.fullname" .) | trunc 63 | trimSuffix "-") .Values.cluster.existingKeySecret }}
{{- end }}

{{/* A size value (memoryBudget, cache.quota) as the agent's flag takes it:
YAML numbers reach templates as floats, so whole bytes are printed as such. */}}
{{- define "meshlet.size" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/* The rules the agent needs to read its models and write their status,
shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "meshlet.modelRules" -}}
- apiGroups: ["meshlet.io"]
  resources: ["models"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["meshlet.io"]
  resources: ["models/status"]
  verbs: ["patch", "update"]
{{- if .Values.compat.modelmesh }}
- apiGroups: ["serving.kserve.io"]
  resources: ["predictors", "inferenceservices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["serving.kserve.io"]
  resources: ["predictors/status", "inferenceservices/status"]
  verbs: ["patch", "update"]
{{- end }}
{{- end }}

{{/* Whether the agent talks to the Kubernetes API at all. */}}
{{- define "meshlet.usesApi" -}}
{{- if or .Values.kube.enabled (and .Values.cluster.enabled (eq .Values.cluster.discovery "kubernetes")) }}true{{ end }}
{{- end }}
