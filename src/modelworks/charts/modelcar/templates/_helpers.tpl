{{/*
The Kubernetes name of a model, as modelworks.gitops.export.k8s_name computes it: lower-case,
runs of characters outside [a-z0-9-] made one "-", a leading non-letter prefixed "m-", and a
name over 63 characters cut to 54 plus "-" and 8 hex of the sha256 of the full name.
*/}}
{{- define "modelcar.name" -}}
{{- $model := required "values: name (the model name) is required" .Values.name | toString -}}
{{- $base := regexReplaceAll "[^a-z0-9-]+" (lower $model) "-" | trimAll "-" -}}
{{- if not $base -}}
{{- fail (printf "values: name %q has no letters or digits; it cannot name a Kubernetes object" $model) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]" $base) -}}
{{- $base = printf "m-%s" $base -}}
{{- end -}}
{{- if gt (len $base) 63 -}}
{{- $base = printf "%s-%s" (trunc 54 $base | trimAll "-") (sha256sum $model | trunc 8) -}}
{{- end -}}
{{- $base -}}
{{- end -}}

{{/* A label value: the slug of a string, at most 63 characters. */}}
{{- define "modelcar.label" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower (toString .)) "-" | trimAll "-" | trunc 63 | trimAll "-" -}}
{{- end -}}

{{/* KServe's modelFormat name for the config's runtime (kserve/config/runtimes). */}}
{{- define "modelcar.format" -}}
{{- $formats := dict "sklearn" "sklearn" "scikit-learn" "sklearn" "onnx" "onnx" "xgboost" "xgboost" "lightgbm" "lightgbm" -}}
{{- $runtime := lower (toString (default "sklearn" .Values.runtime)) -}}
{{- if hasKey $formats $runtime -}}
{{- get $formats $runtime -}}
{{- else if .Values.servingRuntime.enabled -}}
{{- $runtime -}}
{{- else -}}
{{- fail (printf "values: runtime %q has no KServe model format (sklearn, scikit-learn, onnx, xgboost, lightgbm); set servingRuntime.enabled and servingRuntime.image to serve it with a runtime of your own" $runtime) -}}
{{- end -}}
{{- end -}}

{{/*
The ModelCar reference: oci://{image_repository}/{image_namespace}/{name}:{version}, or
@{artifact_digest} in place of :{version} when the config has a digest (pinDigest). An
image_repository that already ends in /{image_namespace}/{name} is used as it is.
*/}}
{{- define "modelcar.storageUri" -}}
{{- $model := toString .Values.name -}}
{{- $version := required "values: version (the model version, the image tag) is required" .Values.version | toString -}}
{{- $registry := required "values: image_repository (the OCI registry) is required" .Values.image_repository | toString | trimPrefix "oci://" | trimSuffix "/" -}}
{{- $ns := toString (default "" .Values.image_namespace) | trimAll "/" -}}
{{- $path := $model -}}
{{- if $ns -}}{{- $path = printf "%s/%s" $ns $model -}}{{- end -}}
{{- $repo := $registry -}}
{{- if not (hasSuffix (printf "/%s" $path) $registry) -}}{{- $repo = printf "%s/%s" $registry $path -}}{{- end -}}
{{- $digest := toString (default "" .Values.artifact_digest) -}}
{{- if and .Values.pinDigest $digest -}}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $digest) -}}
{{- fail (printf "values: artifact_digest %q is not sha256:<64 hex>" $digest) -}}
{{- end -}}
oci://{{ $repo }}@{{ $digest }}
{{- else -}}
oci://{{ $repo }}:{{ $version }}
{{- end -}}
{{- end -}}

{{- define "modelcar.labels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/name: modelcar
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
modelworks.dev/model: {{ include "modelcar.label" .Values.name | quote }}
modelworks.dev/version: {{ include "modelcar.label" .Values.version | quote }}
modelworks.dev/tenant: {{ include "modelcar.label" (default "default" .Values.tenant) | quote }}
{{- with .Values.env }}
modelworks.dev/env: {{ include "modelcar.label" . | quote }}
{{- end }}
{{- end -}}
