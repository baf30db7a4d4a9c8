{{- define "vcsnap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 52 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "vcsnap.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vcsnap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "vcsnap.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "vcsnap.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* s3 options as a URL query; empty for other stores. Args: root context, store URL. */}}
{{- define "vcsnap.storeQuery" -}}
{{- $s3 := index . 0 -}}{{- $url := index . 1 -}}
{{- if hasPrefix "s3://" $url -}}
{{- $q := list -}}
{{- with $s3.region }}{{ $q = append $q (printf "region=%s" .) }}{{ end -}}
{{- with $s3.endpoint }}{{ $q = append $q (printf "endpoint=%s" .) }}{{ end -}}
{{- if $s3.forcePathStyle }}{{ $q = append $q "force-path-style=true" }}{{ end -}}
{{- with $s3.sse }}{{ $q = append $q (printf "sse=%s" .) }}{{ end -}}
{{- with $s3.kmsKeyId }}{{ $q = append $q (printf "kms-key-id=%s" .) }}{{ end -}}
{{- if $q }}?{{ join "&" $q }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every container: credentials from an existing Secret only. */}}
{{- define "vcsnap.envFrom" -}}
{{- if .Values.s3.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.s3.credentialsSecret }}
{{- end }}
{{- end -}}

{{- define "vcsnap.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: JOB_NAME
  valueFrom: {fieldRef: {fieldPath: "metadata.labels['batch.kubernetes.io/job-name']"}}
- name: JOB_UID
  valueFrom: {fieldRef: {fieldPath: "metadata.labels['batch.kubernetes.io/controller-uid']"}}
{{- end -}}

{{- define "vcsnap.containerCommon" -}}
image: {{ include "vcsnap.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext: {{- toYaml .Values.securityContext | nindent 2 }}
resources: {{- toYaml .Values.resources | nindent 2 }}
{{- include "vcsnap.envFrom" . }}
{{- end -}}

{{- define "vcsnap.podCommon" -}}
serviceAccountName: {{ include "vcsnap.serviceAccountName" . }}
automountServiceAccountToken: true
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Where a cluster's delta chains live: apart from the CronJob's <store><name>- bundles,
so each has its own retention. Args: the virtualClusters entry, the store query. */}}
{{- define "vcsnap.pitrPrefix" -}}
{{- $vc := index . 0 -}}{{- $query := index . 1 -}}
{{ printf "%spitr/%s/%s" $vc.store $vc.name $query }}
{{- end -}}
