{{/* The app name: the chart's, or nameOverride. */}}
{{- define "bindery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: the release name when it contains the app name (a
release "bindery" gives bindery-node, bindery-controller, ...), else release-app;
fullnameOverride replaces it.
*/}}
{{- define "bindery.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "bindery.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; "component" objects add app.kubernetes.io/component. */}}
{{- define "bindery.labels" -}}
app.kubernetes.io/name: {{ include "bindery.name" . }}
app.kubernetes.io/part-of: {{ include "bindery.name" . }}
{{- end -}}

{{/* Selector labels of a component: (list $ "node"). Never change them: selectors are immutable. */}}
{{- define "bindery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bindery.name" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of a component's objects: (list $ "node"). */}}
{{- define "bindery.componentLabels" -}}
{{ include "bindery.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* image reference from {repository, tag}; an empty tag is the chart's appVersion. */}}
{{- define "bindery.image" -}}
{{- $img := index . 0 -}}
{{- printf "%s:%s" $img.repository (default (index . 1).Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* The kubelet dir and the state dir, without a trailing slash. */}}
{{- define "bindery.kubeletDir" -}}
{{- .Values.kubeletDir | trimSuffix "/" -}}
{{- end -}}
{{- define "bindery.stateDir" -}}
{{- .Values.stateDir | trimSuffix "/" -}}
{{- end -}}

{{/* The plugin dir on the host: holds csi.sock and, below it, the golden caches. */}}
{{- define "bindery.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "bindery.kubeletDir" .) .Values.driverName -}}
{{- end -}}

{{/* One value of a cache declaration: lists joined with ", ", whole numbers without
an exponent (values arrive as float64). */}}
{{- define "bindery.cacheValue" -}}
{{- if kindIs "slice" . -}}
{{- join ", " . -}}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* caches.conf from .Values.caches: one [cache NAME] section each, source first. */}}
{{- define "bindery.cachesConf" -}}
{{- range $name, $c := .Values.caches }}
[cache {{ $name }}]
source = {{ required (printf "caches.%s.source is required" $name) $c.source }}
{{- range $key, $value := $c }}
{{- if ne $key "source" }}
{{ $key }} = {{ include "bindery.cacheValue" $value }}
{{- end }}
{{- end }}
{{ end }}
{{- end -}}
