// Command validate checks the deploy files strictly, without a cluster or a
// Docker engine:
//
//   - every Kubernetes manifest in deploy/kubernetes decodes into its real Go
//     API type (k8s.io/api, the Prometheus Operator's monitoring/v1) with
//     unknown fields rejected, and KEDA's ScaledObject into a strict mirror of
//     its v1alpha1 spec; plus checks that tie the files together;
//   - both compose files load with compose-go, which validates them against
//     the Compose specification's schema;
//   - the backfill Job (backfill-job.yaml, kept out of the kustomization)
//     decodes into batch/v1 Job and runs like the Deployment: same ConfigMap
//     and Secret, security context and port, and no selector of the stream's
//     matches its pod;
//   - the static-membership overlay (deploy/kubernetes-static-membership)
//     swaps the Deployment for a StatefulSet whose pods are the Deployment's
//     with KAFKA_GROUP_INSTANCE_ID set to the pod's name (and the group
//     protocol chosen for static identities), and points the
//     ScaledObject at it;
//   - the PostHog Cloud kustomization (deploy/kubernetes-cloud) builds one
//     StatefulSet of one replica running `backfill` with the api source and
//     --follow, its checkpoint file on the StatefulSet's volume claim, the
//     Deployment's image and security context, and labels none of the
//     stream's selectors match;
//   - it prints the environment variables the files set ("ENV NAME",
//     "BACKFILL_ENV NAME" for the ones the backfill Job sets, "CLOUD_ENV
//     NAME" for the Cloud one's), so a test can check each is an option the
//     binary accepts; and the Cloud ConfigMap's values ("CLOUD_VALUE NAME
//     VALUE"), so a test can run the binary with them.
//
// Usage: go run ./deploy/validate <repo root>
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// ScaledObject mirrors KEDA's keda.sh/v1alpha1 ScaledObject, strictly.
type ScaledObject struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Metadata   map[string]any   `json:"metadata"`
	Spec       ScaledObjectSpec `json:"spec"`
}

type ScaledObjectSpec struct {
	ScaleTargetRef struct {
		Name       string `json:"name"`
		Kind       string `json:"kind,omitempty"`
		APIVersion string `json:"apiVersion,omitempty"`
	} `json:"scaleTargetRef"`
	PollingInterval  *int32 `json:"pollingInterval,omitempty"`
	CooldownPeriod   *int32 `json:"cooldownPeriod,omitempty"`
	IdleReplicaCount *int32 `json:"idleReplicaCount,omitempty"`
	MinReplicaCount  *int32 `json:"minReplicaCount,omitempty"`
	MaxReplicaCount  *int32 `json:"maxReplicaCount,omitempty"`
	Advanced         *struct {
		RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
		HorizontalPodAutoscalerConfig *struct {
			Name     string               `json:"name,omitempty"`
			Behavior *autoscalingBehavior `json:"behavior,omitempty"`
		} `json:"horizontalPodAutoscalerConfig,omitempty"`
	} `json:"advanced,omitempty"`
	Triggers []struct {
		Type              string            `json:"type"`
		Name              string            `json:"name,omitempty"`
		Metadata          map[string]string `json:"metadata"`
		AuthenticationRef *struct {
			Name string `json:"name"`
			Kind string `json:"kind,omitempty"`
		} `json:"authenticationRef,omitempty"`
	} `json:"triggers"`
}

type autoscalingBehavior struct {
	ScaleUp   *scalingRules `json:"scaleUp,omitempty"`
	ScaleDown *scalingRules `json:"scaleDown,omitempty"`
}

type scalingRules struct {
	StabilizationWindowSeconds *int32 `json:"stabilizationWindowSeconds,omitempty"`
	SelectPolicy               string `json:"selectPolicy,omitempty"`
	Policies                   []struct {
		Type          string `json:"type"`
		Value         int32  `json:"value"`
		PeriodSeconds int32  `json:"periodSeconds"`
	} `json:"policies,omitempty"`
}

type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// Overlay is a kustomization with patches (the static-membership overlay).
type Overlay struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []struct {
		Patch  string `json:"patch"`
		Target *struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"target,omitempty"`
	} `json:"patches"`
}

var failures []string

func fail(format string, args ...any) {
	failures = append(failures, fmt.Sprintf(format, args...))
}

func strict(path string, out any) {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%s: %v", path, err)
		return
	}
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		fail("%s: %v", path, err)
	}
}

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	k8s := filepath.Join(root, "deploy", "kubernetes")
	env := map[string]bool{}

	var configMap corev1.ConfigMap
	strict(filepath.Join(k8s, "configmap.yaml"), &configMap)
	for k := range configMap.Data {
		env[k] = true
	}
	var secret corev1.Secret
	strict(filepath.Join(k8s, "secret.example.yaml"), &secret)
	for k := range secret.StringData {
		env[k] = true
	}
	var deployment appsv1.Deployment
	strict(filepath.Join(k8s, "deployment.yaml"), &deployment)
	var service corev1.Service
	strict(filepath.Join(k8s, "service.yaml"), &service)
	var pdb policyv1.PodDisruptionBudget
	strict(filepath.Join(k8s, "pdb.yaml"), &pdb)
	var monitor monitoringv1.ServiceMonitor
	strict(filepath.Join(k8s, "servicemonitor.yaml"), &monitor)
	var rule monitoringv1.PrometheusRule
	strict(filepath.Join(k8s, "prometheusrule.yaml"), &rule)
	var scaled ScaledObject
	strict(filepath.Join(k8s, "scaledobject.yaml"), &scaled)
	var kustomization Kustomization
	strict(filepath.Join(k8s, "kustomization.yaml"), &kustomization)
	var job batchv1.Job
	strict(filepath.Join(k8s, "backfill-job.yaml"), &job)

	// Kinds and API versions.
	for _, c := range []struct{ got, want string }{
		{configMap.Kind, "ConfigMap"}, {secret.Kind, "Secret"}, {deployment.Kind, "Deployment"},
		{deployment.APIVersion, "apps/v1"}, {service.Kind, "Service"}, {pdb.Kind, "PodDisruptionBudget"},
		{pdb.APIVersion, "policy/v1"}, {monitor.Kind, "ServiceMonitor"}, {monitor.APIVersion, "monitoring.coreos.com/v1"},
		{rule.Kind, "PrometheusRule"}, {scaled.Kind, "ScaledObject"}, {scaled.APIVersion, "keda.sh/v1alpha1"},
		{job.Kind, "Job"}, {job.APIVersion, "batch/v1"},
	} {
		if c.got != c.want {
			fail("expected %q, found %q", c.want, c.got)
		}
	}

	// The pieces fit together.
	labels := deployment.Spec.Template.Labels
	for k, v := range deployment.Spec.Selector.MatchLabels {
		if labels[k] != v {
			fail("deployment: selector %s=%s does not match the pod template", k, v)
		}
	}
	for k, v := range service.Spec.Selector {
		if labels[k] != v {
			fail("service: selector %s=%s matches no pod", k, v)
		}
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if labels[k] != v {
			fail("pdb: selector %s=%s matches no pod", k, v)
		}
	}
	for k, v := range monitor.Spec.Selector.MatchLabels {
		if service.Labels[k] != v {
			fail("servicemonitor: selector %s=%s matches no service", k, v)
		}
	}
	if scaled.Spec.ScaleTargetRef.Name != deployment.Name {
		fail("scaledobject: targets %q, not the deployment %q", scaled.Spec.ScaleTargetRef.Name, deployment.Name)
	}
	container := deployment.Spec.Template.Spec.Containers[0]
	probes := map[string]*corev1.Probe{"/readyz": container.ReadinessProbe, "/healthz": container.LivenessProbe}
	for path, probe := range probes {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path {
			fail("deployment: expected an HTTP probe on %s", path)
		}
	}
	if drain, err := strconv.Atoi(configMap.Data["SHUTDOWN_TIMEOUT_MS"]); err == nil {
		for _, p := range []struct {
			name  string
			grace *int64
		}{
			{"deployment", deployment.Spec.Template.Spec.TerminationGracePeriodSeconds},
			{"backfill-job", job.Spec.Template.Spec.TerminationGracePeriodSeconds},
		} {
			if p.grace == nil || *p.grace*1000 <= int64(drain)+5000 {
				fail("%s: terminationGracePeriodSeconds must exceed SHUTDOWN_TIMEOUT_MS (%d ms) with room to commit", p.name, drain)
			}
		}
	}
	if scaled.Spec.MaxReplicaCount == nil || *scaled.Spec.MaxReplicaCount > 12 {
		fail("scaledobject: maxReplicaCount must be set and at most the partition count (12)")
	}
	for _, t := range scaled.Spec.Triggers {
		// A trigger without a topic watches the group's lag over all its
		// topics: right for a list or a pattern. With a topic, it must be the
		// one topic the connector reads.
		topic, named := t.Metadata["topic"]
		single := !strings.ContainsAny(configMap.Data["KAFKA_TOPIC"], ",^")
		if t.Type != "kafka" || t.Metadata["consumerGroup"] != configMap.Data["KAFKA_CONSUMER_GROUP"] || (named && (!single || topic != configMap.Data["KAFKA_TOPIC"])) {
			fail("scaledobject: the kafka trigger must watch the connector's group (and, if it names a topic, the one topic KAFKA_TOPIC names)")
		}
	}
	resources := map[string]bool{}
	for _, r := range kustomization.Resources {
		resources[r] = true
		if _, err := os.Stat(filepath.Join(k8s, r)); err != nil {
			fail("kustomization: %s: %v", r, err)
		}
	}
	for _, f := range []string{"deployment.yaml", "service.yaml", "pdb.yaml", "servicemonitor.yaml", "prometheusrule.yaml", "scaledobject.yaml", "configmap.yaml"} {
		if !resources[f] {
			fail("kustomization: %s is not listed", f)
		}
	}
	// Applying the kustomization must not start a backfill.
	if resources["backfill-job.yaml"] {
		fail("kustomization: backfill-job.yaml must not be listed")
	}
	for _, e := range container.Env {
		env[e.Name] = true
	}
	backfillEnv := checkJob(&job, &deployment, &service, &pdb)
	cloudEnv := checkCloud(filepath.Join(root, "deploy", "kubernetes-cloud"), &deployment, &service, &pdb)
	for _, name := range checkStatic(filepath.Join(root, "deploy", "kubernetes-static-membership"), &deployment, &scaled) {
		env[name] = true
	}
	// What kubectl apply -k creates, built by kustomize itself.
	builtKinds(k8s, []string{"Deployment"}, nil, true)
	builtKinds(filepath.Join(root, "deploy", "kubernetes-static-membership"), []string{"StatefulSet"}, []string{"Deployment"}, true)
	builtKinds(filepath.Join(root, "deploy", "kubernetes-cloud"), []string{"StatefulSet", "ConfigMap"}, []string{"Deployment", "Secret", "ScaledObject", "Job"}, false)

	// Compose files, validated against the Compose specification.
	for _, file := range []string{filepath.Join(root, "docker-compose.yml"), filepath.Join(root, "deploy", "posthog", "docker-compose.yml")} {
		envFile := filepath.Join(filepath.Dir(file), "connector.env")
		cleanup := false
		if strings.Contains(file, "posthog") {
			// The env file the user writes from the example.
			if _, err := os.Stat(envFile); os.IsNotExist(err) {
				example, _ := os.ReadFile(envFile + ".example")
				_ = os.WriteFile(envFile, example, 0o600)
				cleanup = true
			}
			for _, line := range strings.Split(readOrEmpty(envFile+".example"), "\n") {
				if k, _, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
					env[k] = true
				}
			}
		}
		options, err := cli.NewProjectOptions([]string{file}, cli.WithName("validate"), cli.WithOsEnv)
		if err != nil {
			fail("%s: %v", file, err)
			continue
		}
		project, err := options.LoadProject(context.Background())
		if cleanup {
			_ = os.Remove(envFile)
		}
		if err != nil {
			fail("%s: %v", file, err)
			continue
		}
		for _, s := range project.Services {
			if s.ContainerName != "" && s.Name == "connector" {
				fail("%s: the connector must not set container_name (it must scale)", file)
			}
			if strings.Contains(s.Name, "connector") {
				for k := range s.Environment {
					env[k] = true
				}
			}
		}
	}

	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Println("ENV", k)
	}
	for _, k := range backfillEnv {
		fmt.Println("BACKFILL_ENV", k)
	}
	for _, k := range cloudEnv {
		fmt.Println("CLOUD_ENV", k)
	}
	for _, k := range sortedKeys(cloudValues(filepath.Join(root, "deploy", "kubernetes-cloud"))) {
		fmt.Println("CLOUD_VALUE", k)
	}
	if len(failures) > 0 {
		for _, f := range failures {
			fmt.Fprintln(os.Stderr, "INVALID:", f)
		}
		os.Exit(1)
	}
	fmt.Println("OK deploy files are valid")
}

// checkJob checks that the backfill Job runs as the Deployment does, with the
// stream's configuration, and returns the names its container sets in env.
func checkJob(job *batchv1.Job, deployment *appsv1.Deployment, service *corev1.Service, pdb *policyv1.PodDisruptionBudget) []string {
	pod := job.Spec.Template.Spec
	stream := deployment.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		fail("backfill-job: expected one container, found %d", len(pod.Containers))
		return nil
	}
	c, s := pod.Containers[0], stream.Containers[0]
	if !slices.Equal(c.Args, []string{"backfill"}) || len(c.Command) > 0 {
		fail("backfill-job: the container must run the image's entrypoint with args [backfill], not %v %v", c.Command, c.Args)
	}
	if c.Image != s.Image {
		fail("backfill-job: image %q differs from the deployment's %q", c.Image, s.Image)
	}
	// The stream's ConfigMap and Secret: its KAFKA_CONSUMER_GROUP, STATE_TOPIC and webhook.
	if !reflect.DeepEqual(c.EnvFrom, s.EnvFrom) {
		fail("backfill-job: envFrom must be the deployment's (its ConfigMap and Secret)")
	}
	if !reflect.DeepEqual(pod.SecurityContext, stream.SecurityContext) || !reflect.DeepEqual(c.SecurityContext, s.SecurityContext) {
		fail("backfill-job: the pod's and the container's securityContext must be the deployment's")
	}
	if !reflect.DeepEqual(c.Ports, s.Ports) {
		fail("backfill-job: ports must be the deployment's (/metrics at HTTP_ADDR)")
	}
	if c.Resources.Limits.Memory().IsZero() {
		fail("backfill-job: expected a memory limit")
	}
	if pod.RestartPolicy != corev1.RestartPolicyOnFailure && pod.RestartPolicy != corev1.RestartPolicyNever {
		fail("backfill-job: restartPolicy must be OnFailure or Never, not %q", pod.RestartPolicy)
	}
	if job.Spec.PodFailurePolicy != nil && pod.RestartPolicy != corev1.RestartPolicyNever {
		fail("backfill-job: podFailurePolicy needs restartPolicy Never")
	}
	// It resumes from its checkpoint: retries are cheap, and a finished Job goes away.
	if job.Spec.BackoffLimit == nil || *job.Spec.BackoffLimit < 1 {
		fail("backfill-job: expected a backoffLimit of at least 1")
	}
	if job.Spec.TTLSecondsAfterFinished == nil {
		fail("backfill-job: expected ttlSecondsAfterFinished")
	}
	notAReplica("backfill-job", job.Spec.Template.Labels, deployment, service, pdb)
	names := []string{}
	for _, e := range c.Env {
		names = append(names, e.Name)
	}
	if !slices.Contains(names, "POSTHOG_TEAM_ID") {
		// Required by a backfill; in the ConfigMap it would filter the stream too.
		fail("backfill-job: the Job must set POSTHOG_TEAM_ID")
	}
	sort.Strings(names)
	return names
}

func readOrEmpty(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// checkStatic checks the static-membership overlay: a StatefulSet whose pods
// are the Deployment's plus their identity, in the Deployment's place, and
// the ScaledObject retargeted. It returns the names the StatefulSet adds to env.
func checkStatic(dir string, deployment *appsv1.Deployment, scaled *ScaledObject) []string {
	var overlay Overlay
	strict(filepath.Join(dir, "kustomization.yaml"), &overlay)
	var set appsv1.StatefulSet
	strict(filepath.Join(dir, "statefulset.yaml"), &set)
	if set.Kind != "StatefulSet" || set.APIVersion != "apps/v1" {
		fail("static-membership: expected an apps/v1 StatefulSet, found %s %s", set.APIVersion, set.Kind)
	}
	if set.Name != deployment.Name || set.Name != scaled.Spec.ScaleTargetRef.Name {
		fail("static-membership: the StatefulSet must take the Deployment's name %q (the ScaledObject's target)", deployment.Name)
	}
	if !slices.Contains(overlay.Resources, "../kubernetes") || !slices.Contains(overlay.Resources, "statefulset.yaml") {
		fail("static-membership: the kustomization must build on ../kubernetes and add statefulset.yaml")
	}
	deleted, retargeted := false, false
	for _, p := range overlay.Patches {
		if strings.Contains(p.Patch, "$patch: delete") && strings.Contains(p.Patch, "kind: Deployment") {
			deleted = true
		}
		if p.Target != nil && p.Target.Kind == "ScaledObject" && strings.Contains(p.Patch, "/spec/scaleTargetRef/kind") && strings.Contains(p.Patch, "StatefulSet") {
			retargeted = true
		}
	}
	if !deleted || !retargeted {
		fail("static-membership: the kustomization must delete the Deployment and point the ScaledObject at the StatefulSet")
	}
	if set.Spec.ServiceName == "" || set.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		fail("static-membership: expected a serviceName and podManagementPolicy Parallel")
	}
	if !reflect.DeepEqual(set.Spec.Selector, deployment.Spec.Selector) || !reflect.DeepEqual(set.Spec.Template.Labels, deployment.Spec.Template.Labels) {
		fail("static-membership: selector and pod labels must be the Deployment's (the Service, PDB and monitoring select them)")
	}
	pod := *set.Spec.Template.Spec.DeepCopy()
	if len(pod.Containers) != 1 {
		fail("static-membership: expected one container")
		return nil
	}
	var names []string
	identity := false
	var rest []corev1.EnvVar
	for _, e := range pod.Containers[0].Env {
		names = append(names, e.Name)
		if e.Name == "KAFKA_GROUP_INSTANCE_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			identity = true
			continue
		}
		if e.Name == "KAFKA_GROUP_PROTOCOL" && slices.Contains([]string{"auto", "classic", "consumer"}, e.Value) {
			continue
		}
		rest = append(rest, e)
	}
	if !identity {
		fail("static-membership: KAFKA_GROUP_INSTANCE_ID must come from the pod's name (fieldRef metadata.name)")
	}
	pod.Containers[0].Env = rest
	want := deployment.Spec.Template.Spec
	if len(want.Containers) == 1 && len(want.Containers[0].Env) == 0 && len(rest) == 0 {
		pod.Containers[0].Env = want.Containers[0].Env
	}
	if !reflect.DeepEqual(pod, want) {
		fail("static-membership: the StatefulSet's pod must be the Deployment's, plus KAFKA_GROUP_INSTANCE_ID (and KAFKA_GROUP_PROTOCOL)")
	}
	return names
}

// builtKinds builds the kustomization in dir with kustomize's own library and
// checks that it yields the given kinds and none of the refused ones, and (if
// scaled) that the ScaledObject targets the workload it yields.
func builtKinds(dir string, want, refused []string, scaled bool) {
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		fail("kustomize build %s: %v", dir, err)
		return
	}
	kinds := map[string]bool{}
	target := ""
	for _, r := range resources.Resources() {
		kinds[r.GetKind()] = true
		if r.GetKind() == "ScaledObject" {
			if k, err := r.GetString("spec.scaleTargetRef.kind"); err == nil {
				target = k
			} else {
				target = "Deployment"
			}
		}
	}
	for _, k := range want {
		if !kinds[k] {
			fail("kustomize build %s: no %s", dir, k)
		}
		if scaled && k != "ConfigMap" && target != k {
			fail("kustomize build %s: the ScaledObject targets a %s, not the %s", dir, target, k)
		}
	}
	for _, k := range refused {
		if kinds[k] {
			fail("kustomize build %s: a %s is left", dir, k)
		}
	}
}

// checkCloud checks the PostHog Cloud kustomization: one pod running
// `backfill --follow` on the query API, its checkpoint file on the
// StatefulSet's volume claim, run as the Deployment's pods are, and out of
// the stream's selectors. It returns the names its ConfigMap and Secret set.
func checkCloud(dir string, deployment *appsv1.Deployment, service *corev1.Service, pdb *policyv1.PodDisruptionBudget) []string {
	var kustomization Kustomization
	strict(filepath.Join(dir, "kustomization.yaml"), &kustomization)
	var set appsv1.StatefulSet
	strict(filepath.Join(dir, "statefulset.yaml"), &set)
	var configMap corev1.ConfigMap
	strict(filepath.Join(dir, "configmap.yaml"), &configMap)
	var secret corev1.Secret
	strict(filepath.Join(dir, "secret.example.yaml"), &secret)
	if set.Kind != "StatefulSet" || set.APIVersion != "apps/v1" || configMap.Kind != "ConfigMap" || secret.Kind != "Secret" {
		fail("cloud: expected an apps/v1 StatefulSet, a ConfigMap and a Secret")
	}
	if !slices.Equal(kustomization.Resources, []string{"configmap.yaml", "statefulset.yaml"}) {
		fail("cloud: the kustomization must list configmap.yaml and statefulset.yaml only (the Secret is created out of band), not %v", kustomization.Resources)
	}
	// One process: the query API has no partitions, and the file one writer.
	if set.Spec.Replicas == nil || *set.Spec.Replicas != 1 {
		fail("cloud: the StatefulSet must run exactly one replica")
	}
	pod := set.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		fail("cloud: expected one container, found %d", len(pod.Containers))
		return nil
	}
	c := pod.Containers[0]
	// What the process sees: the ConfigMap's data, under the container's own
	// env (which wins over envFrom).
	data := map[string]string{}
	for k, v := range configMap.Data {
		data[k] = v
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			data[e.Name] = "<from " + e.Name + " elsewhere>"
		} else {
			data[e.Name] = e.Value
		}
	}
	if data["BACKFILL_SOURCE"] != "api" || data["BACKFILL_FOLLOW"] != "true" {
		fail("cloud: the ConfigMap must set BACKFILL_SOURCE=api and BACKFILL_FOLLOW=true")
	}
	// No Kafka: no dead-letter topic, so a refused event must stop the run.
	if data["DLQ_POLICY"] != "block" {
		fail("cloud: the ConfigMap must set DLQ_POLICY=block (no dead-letter topic without Kafka)")
	}
	for _, k := range []string{"POSTHOG_API_URL", "POSTHOG_PROJECT_ID"} {
		if data[k] == "" {
			fail("cloud: the ConfigMap must set %s", k)
		}
	}
	for _, k := range []string{"PATTERNS_WEBHOOK_URL", "POSTHOG_PERSONAL_API_KEY"} {
		if _, ok := secret.StringData[k]; !ok {
			fail("cloud: the Secret must hold %s", k)
		}
		if _, ok := data[k]; ok {
			fail("cloud: %s is a secret, not ConfigMap data or a plain env value", k)
		}
	}
	s := deployment.Spec.Template.Spec.Containers[0]
	if !slices.Equal(c.Args, []string{"backfill"}) || len(c.Command) > 0 {
		fail("cloud: the container must run the image's entrypoint with args [backfill], not %v %v", c.Command, c.Args)
	}
	if c.Image != s.Image {
		fail("cloud: image %q differs from the deployment's %q", c.Image, s.Image)
	}
	from := map[string]bool{}
	for _, e := range c.EnvFrom {
		if e.ConfigMapRef != nil && e.ConfigMapRef.Name == configMap.Name {
			from["configmap"] = true
		}
		if e.SecretRef != nil && e.SecretRef.Name == secret.Name {
			from["secret"] = true
		}
	}
	if !from["configmap"] || !from["secret"] {
		fail("cloud: envFrom must name the ConfigMap %q and the Secret %q", configMap.Name, secret.Name)
	}
	if !reflect.DeepEqual(c.SecurityContext, s.SecurityContext) || !reflect.DeepEqual(c.Ports, s.Ports) {
		fail("cloud: the container's securityContext and ports must be the deployment's")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsUser == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != *pod.SecurityContext.RunAsUser {
		fail("cloud: the pod's fsGroup must be its runAsUser, so that the volume is writable")
	}
	if c.Resources.Limits.Memory().IsZero() {
		fail("cloud: expected a memory limit")
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil {
		fail("cloud: expected readiness and liveness probes")
	}
	drain := 20000 // SHUTDOWN_TIMEOUT_MS's default
	if v, ok := data["SHUTDOWN_TIMEOUT_MS"]; ok {
		parsed, err := strconv.Atoi(v)
		if err != nil {
			fail("cloud: SHUTDOWN_TIMEOUT_MS %q is not a number of milliseconds", v)
		}
		drain = parsed
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g*1000 <= int64(drain)+5000 {
		fail("cloud: terminationGracePeriodSeconds must exceed SHUTDOWN_TIMEOUT_MS (%d ms) with room for the last checkpoint", drain)
	}
	// The checkpoint and its lock live on the volume claim, the only
	// writable place (the root filesystem is read-only).
	stateFile := filepath.Clean(data["BACKFILL_STATE_FILE"])
	onClaim := false
	for _, m := range c.VolumeMounts {
		for _, t := range set.Spec.VolumeClaimTemplates {
			// The backfill creates the file, not its directory.
			if m.Name == t.Name && filepath.Clean(m.MountPath) == filepath.Dir(stateFile) && !m.ReadOnly {
				onClaim = true
			}
		}
	}
	if !filepath.IsAbs(data["BACKFILL_STATE_FILE"]) || !onClaim {
		fail("cloud: BACKFILL_STATE_FILE must be a file in the directory where a volumeClaimTemplate is mounted (the backfill does not create directories)")
	}
	labels := set.Spec.Template.Labels
	for k, v := range set.Spec.Selector.MatchLabels {
		if labels[k] != v {
			fail("cloud: selector %s=%s does not match the pod template", k, v)
		}
	}
	notAReplica("cloud", labels, deployment, service, pdb)
	names := []string{}
	for k := range data {
		names = append(names, k)
	}
	for k := range secret.StringData {
		names = append(names, k)
	}
	for _, e := range c.Env {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	return names
}

// cloudValues is the Cloud ConfigMap's data, as "NAME VALUE".
func cloudValues(dir string) map[string]bool {
	var configMap corev1.ConfigMap
	strict(filepath.Join(dir, "configmap.yaml"), &configMap)
	lines := map[string]bool{}
	for k, v := range configMap.Data {
		lines[k+" "+v] = true
	}
	return lines
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// notAReplica fails when one of the stream's selectors (Deployment, Service,
// PodDisruptionBudget) matches a pod with these labels: it would count as a
// stream replica.
func notAReplica(who string, labels map[string]string, deployment *appsv1.Deployment, service *corev1.Service, pdb *policyv1.PodDisruptionBudget) {
	for _, sel := range []struct {
		name     string
		selector map[string]string
	}{
		{"deployment", deployment.Spec.Selector.MatchLabels}, {"service", service.Spec.Selector}, {"pdb", pdb.Spec.Selector.MatchLabels},
	} {
		matched := len(sel.selector) > 0
		for k, v := range sel.selector {
			matched = matched && labels[k] == v
		}
		if matched {
			fail("%s: the stream's %s selector matches its pod", who, sel.name)
		}
	}
}
