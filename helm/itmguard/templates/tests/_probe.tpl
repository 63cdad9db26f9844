{{/*
A `helm test` pod that fetches one URL with the itmguard image's own Python and passes when the
answer is 200 and its body holds the expected text. Call with
(dict "root" $ "name" "test-review" "url" "http://…" "expect" "ok").
*/}}
{{- define "itmguard.testPod" -}}
{{- $root := .root }}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "itmguard.componentName" (list $root .name) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "itmguard.labels" (dict "root" $root "component" "test") | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "itmguard.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: probe
      image: {{ include "itmguard.image" (dict "root" $root "gpu" false) | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        - python
        - -c
        - |
          import os, sys, urllib.request
          url, expect = os.environ["PROBE_URL"], os.environ["PROBE_EXPECT"]
          with urllib.request.urlopen(url, timeout=10) as response:
              body = response.read().decode()
          print(url, response.status)
          sys.exit(0 if response.status == 200 and expect in body else 1)
      env:
        - name: PROBE_URL
          value: {{ .url | quote }}
        - name: PROBE_EXPECT
          value: {{ .expect | quote }}
      {{- with $root.Values.tests.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "itmguard.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
{{- end }}
