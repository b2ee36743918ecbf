{{/* Names, labels and the pieces every workload shares. */}}

{{- define "cunliang.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name, kept short: KubeRay derives "<name>-head-svc" and pod names from it. */}}
{{- define "cunliang.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cunliang.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cunliang.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cunliang.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cunliang.labels" -}}
helm.sh/chart: {{ include "cunliang.chart" . }}
{{ include "cunliang.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cunliang
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cunliang.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cunliang.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of a flavour: include "cunliang.image" (list $ "cpu") */}}
{{- define "cunliang.image" -}}
{{- $root := index . 0 -}}
{{- $flavour := index . 1 -}}
{{- printf "%s:%s-%s" $root.Values.image.repository (default $root.Chart.AppVersion $root.Values.image.tag) $flavour -}}
{{- end -}}

{{- define "cunliang.rayClusterName" -}}
{{- include "cunliang.fullname" . -}}
{{- end -}}

{{/* KubeRay names the head service "<raycluster>-head-svc". */}}
{{- define "cunliang.rayHeadService" -}}
{{- printf "%s-head-svc" (include "cunliang.rayClusterName" .) -}}
{{- end -}}

{{/* Gateway pods whether ready or not: in-cluster callers of the admin API (agents, CLI). */}}
{{- define "cunliang.gatewayInternalService" -}}
{{- printf "%s-gateway-internal.%s.svc.cluster.local" (include "cunliang.fullname" .) .Release.Namespace -}}
{{- end -}}


{{- define "cunliang.adminSecretName" -}}
{{- default (printf "%s-admin" (include "cunliang.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{- define "cunliang.postgresName" -}}
{{- printf "%s-postgresql" (include "cunliang.fullname" .) -}}
{{- end -}}

{{/* The Secret and key holding the SQLAlchemy URL. */}}
{{- define "cunliang.databaseSecretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "cunliang.postgresName" . -}}
{{- else -}}
{{- required "database.existingSecret is required when postgresql.enabled=false" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "cunliang.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled -}}database-url{{- else -}}{{ .Values.database.key }}{{- end -}}
{{- end -}}

{{/* Environment every cunliang process reads through its Settings (CUNLIANG_*). */}}
{{- define "cunliang.commonEnv" -}}
- name: CUNLIANG_DATA_DIR
  value: /data
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /data/cache
- name: HF_HOME
  value: /data/huggingface
- name: CUNLIANG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "cunliang.databaseSecretName" . }}
      key: {{ include "cunliang.databaseSecretKey" . }}
- name: CUNLIANG_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "cunliang.adminSecretName" . }}
      key: {{ .Values.adminToken.key }}
{{- end -}}

{{/* Writable scratch for read-only root filesystems: /tmp and the data dir. */}}
{{- define "cunliang.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- end -}}

{{- define "cunliang.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
{{- end -}}

{{/* Device class id of a worker group: "<site>/<device>". */}}
{{- define "cunliang.deviceClassId" -}}
{{- printf "%s/%s" .site .device -}}
{{- end -}}

{{/*
Checks the schema cannot express: worker group names and device classes are unique.
Fails the install with a message naming the offending entries.
*/}}
{{- define "cunliang.validate" -}}
{{- $names := dict -}}
{{- $classes := dict -}}
{{- range $i, $g := .Values.workerGroups -}}
{{- if hasKey $names $g.name -}}
{{- fail (printf "workerGroups[%d].name %q is used twice: each worker group needs its own name" $i $g.name) -}}
{{- end -}}
{{- $_ := set $names $g.name true -}}
{{- $id := include "cunliang.deviceClassId" $g -}}
{{- if hasKey $classes $id -}}
{{- fail (printf "workerGroups[%d] repeats device class %q (already workerGroups %s): one worker group per device class" $i $id (get $classes $id)) -}}
{{- end -}}
{{- $_ := set $classes $id $g.name -}}
{{- if or (gt (int $g.minReplicas) (int $g.replicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- fail (printf "workerGroups[%d] %q: need minReplicas <= replicas <= maxReplicas, got %d <= %d <= %d" $i $g.name (int $g.minReplicas) (int $g.replicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Ray containers: /tmp/ray is shared with the head's scheduler sidecar so it attaches to the raylet.
The volume is named "ray-logs" because that is the name KubeRay looks for when it adds the
autoscaler: it then mounts this same volume in the autoscaler instead of a second one.
*/}}
{{- define "cunliang.rayVolumes" -}}
{{ include "cunliang.scratchVolumes" . }}
- name: ray-logs
  emptyDir: {}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.sharedMemorySize }}
{{- end -}}

{{- define "cunliang.rayMounts" -}}
{{ include "cunliang.scratchMounts" . }}
- name: ray-logs
  mountPath: /tmp/ray
- name: shm
  mountPath: /dev/shm
{{- end -}}

{{- define "cunliang.raySecurityContext" -}}
{{- $ctx := deepCopy .Values.containerSecurityContext -}}
{{- $_ := set $ctx "readOnlyRootFilesystem" .Values.ray.readOnlyRootFilesystem -}}
{{ toYaml $ctx }}
{{- end -}}

{{/* A map as a JSON flow mapping with string values ({} when empty): KubeRay's rayStartParams. */}}
{{- define "cunliang.stringMap" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- $_ := set $out $k (toString $v) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The gateway's workload kind: StatefulSet when its usage WAL is on PersistentVolumeClaims. */}}
{{- define "cunliang.gatewayKind" -}}
{{- if .Values.gateway.usageWal.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}
