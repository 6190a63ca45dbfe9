{{/* Names and labels. */}}
{{- define "driftloop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "driftloop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: driftloop
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The selector of one service's pods: (dict "root" $ "service" "inference"). */}}
{{- define "driftloop.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "driftloop.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "driftloop.fullname" .)) -}}
{{- end -}}

{{- define "driftloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "driftloop.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "driftloop.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .service (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* What each service consumes on the request path, for its lag-based autoscaling. */}}
{{- define "driftloop.consumes" -}}
{{- $topics := dict "ingest" "events_raw" "feature" "events_validated" "inference" "predictions_requests" -}}
{{- $key := get $topics .service -}}
{{- $defaults := dict "events_raw" "events.raw" "events_validated" "events.validated" "predictions_requests" "predictions.requests" -}}
{{- get .root.Values.topics $key | default (get $defaults $key) -}}
{{- end -}}

{{/* The consumer group of a service: its `group_id` setting. */}}
{{- define "driftloop.group" -}}
{{- $env := (get .root.Values.services .service).env | default dict -}}
{{- get $env "DRIFTLOOP_GROUP_ID" | default .service -}}
{{- end -}}

{{/* The environment every container of the release has (settings; credentials from the Secret). */}}
{{- define "driftloop.env" -}}
- name: DRIFTLOOP_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "driftloop.secretName" . }}, key: kafka-sasl-password, optional: true}}
- name: DRIFTLOOP_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "driftloop.secretName" . }}, key: redis-password, optional: true}}
- name: DRIFTLOOP_OBJECT_STORE_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ include "driftloop.secretName" . }}, key: object-store-secret-access-key, optional: true}}
{{- if .Values.kafka.caSecret }}
- name: DRIFTLOOP_KAFKA_CA_FILE
  value: /etc/driftloop/kafka-ca/ca.crt
{{- end }}
{{- if .Values.redis.caSecret }}
- name: DRIFTLOOP_REDIS_CA_FILE
  value: /etc/driftloop/redis-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "driftloop.caMounts" -}}
{{- if .Values.kafka.caSecret }}
- {name: kafka-ca, mountPath: /etc/driftloop/kafka-ca, readOnly: true}
{{- end }}
{{- if .Values.redis.caSecret }}
- {name: redis-ca, mountPath: /etc/driftloop/redis-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "driftloop.caVolumes" -}}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret: {secretName: {{ .Values.kafka.caSecret }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end }}
{{- if .Values.redis.caSecret }}
- name: redis-ca
  secret: {secretName: {{ .Values.redis.caSecret }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end }}
{{- end -}}
