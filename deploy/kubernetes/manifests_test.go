// Package kubernetes checks kvstore's Kubernetes manifests without a
// cluster: every document is decoded strictly into the API's own Go types
// (k8s.io/api: an unknown or misspelt field, a wrong type or a duplicate
// field fails, as the API server's strict field validation does), names
// and labels are checked with apimachinery's validation, and the parts
// that must fit together for kvstore (seeds, probes, quorum) are checked
// by hand. What only a cluster checks (admission, defaulting, scheduling,
// the image being pullable) is not.
package kubernetes

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

type manifests struct {
	statefulSets []appsv1.StatefulSet
	services     []corev1.Service
	pdbs         []policyv1.PodDisruptionBudget
}

func load(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var m manifests
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			var obj any
			var meta *metav1.ObjectMeta
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 StatefulSet":
				m.statefulSets = append(m.statefulSets, appsv1.StatefulSet{})
				obj, meta = &m.statefulSets[len(m.statefulSets)-1], &m.statefulSets[len(m.statefulSets)-1].ObjectMeta
			case "v1 Service":
				m.services = append(m.services, corev1.Service{})
				obj, meta = &m.services[len(m.services)-1], &m.services[len(m.services)-1].ObjectMeta
			case "policy/v1 PodDisruptionBudget":
				m.pdbs = append(m.pdbs, policyv1.PodDisruptionBudget{})
				obj, meta = &m.pdbs[len(m.pdbs)-1], &m.pdbs[len(m.pdbs)-1].ObjectMeta
			default:
				t.Fatalf("%s document %d: unexpected %s %s", f, i, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i, tm.Kind, err)
			}
			for _, msg := range validation.IsDNS1123Subdomain(meta.Name) {
				t.Errorf("%s %s: name: %s", tm.Kind, meta.Name, msg)
			}
			for k, v := range meta.Labels {
				for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
					t.Errorf("%s %s: label %s=%s: %s", tm.Kind, meta.Name, k, v, msg)
				}
			}
		}
	}
	return m
}

func (m manifests) service(name string) *corev1.Service {
	for i := range m.services {
		if m.services[i].Name == name {
			return &m.services[i]
		}
	}
	return nil
}

// arg returns the value of --name=value in args.
func arg(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func TestManifests(t *testing.T) {
	m := load(t)
	if len(m.statefulSets) != 1 || len(m.pdbs) != 1 {
		t.Fatalf("want one StatefulSet and one PodDisruptionBudget, have %d and %d", len(m.statefulSets), len(m.pdbs))
	}
	ss := m.statefulSets[0]
	spec := ss.Spec
	replicas := int(*spec.Replicas)
	podLabels := labels.Set(spec.Template.Labels)

	sel, err := metav1.LabelSelectorAsSelector(spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("the StatefulSet's selector %v does not match its pods' labels %v (%v)", spec.Selector, podLabels, err)
	}
	if spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q: the pods wait for each other to bootstrap, so they must start in parallel", spec.PodManagementPolicy)
	}

	// The seeds: a headless Service that lists pods before they are ready.
	peers := m.service(spec.ServiceName)
	if peers == nil {
		t.Fatalf("no Service %q (the StatefulSet's serviceName)", spec.ServiceName)
	}
	if peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s must be headless and publish not-ready addresses", peers.Name)
	}
	// A client Service other than the headless one.
	var client *corev1.Service
	for i := range m.services {
		if m.services[i].Name != peers.Name {
			client = &m.services[i]
		}
	}
	if client == nil || client.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Errorf("no client Service with a cluster IP")
	}
	for _, svc := range m.services {
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
			t.Errorf("Service %s selects %v, not the pods %v", svc.Name, svc.Spec.Selector, podLabels)
		}
	}

	if len(spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container, have %d", len(spec.Template.Spec.Containers))
	}
	c := spec.Template.Spec.Containers[0]
	args := c.Args
	if v, _ := arg(args, "join"); v != peers.Name {
		t.Errorf("--join=%q, want the headless Service %q", v, peers.Name)
	}
	if v, _ := arg(args, "bootstrap-expect"); v != "3" || replicas != 3 {
		t.Errorf("--bootstrap-expect=%s with %d replicas: want 3 and 3", v, replicas)
	}
	if v, _ := arg(args, "name"); v != "$(POD_NAME)" || !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Errorf("--name must be the pod's name (a stable node id): %q", v)
	}

	// Ports: the Services' target ports and the probes' ports are named
	// container ports; TCP and UDP on 7379.
	named := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		named[p.Name] = p
	}
	if named["kvstore"].ContainerPort != 7379 || named["kvstore"].Protocol != corev1.ProtocolTCP ||
		named["gossip"].ContainerPort != 7379 || named["gossip"].Protocol != corev1.ProtocolUDP {
		t.Errorf("want 7379/TCP named kvstore and 7379/UDP named gossip, have %v", c.Ports)
	}
	for _, svc := range m.services {
		for _, p := range svc.Spec.Ports {
			cp, ok := named[p.TargetPort.String()]
			if !ok || cp.Protocol != p.Protocol {
				t.Errorf("Service %s port %s targets %q, which is no %s container port", svc.Name, p.Name, p.TargetPort.String(), p.Protocol)
			}
		}
	}
	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path {
			t.Errorf("%s probe: want GET %s", what, path)
			return
		}
		if _, ok := named[p.HTTPGet.Port.String()]; !ok {
			t.Errorf("%s probe: port %q is not a container port", what, p.HTTPGet.Port.String())
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")

	// A clean leave (hand over, removal from raft, leaving gossip) takes a
	// few seconds, at most about 35 s (kvd's own bounds).
	if g := spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g < 40 {
		t.Errorf("terminationGracePeriodSeconds %v: want at least 40 for a clean leave", g)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		t.Errorf("no preStop hook")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: want cpu and memory requests and a memory limit, have %v", c.Resources)
	}
	sc := spec.Template.Spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 || sc.FSGroup == nil {
		t.Errorf("the pod must run as the image's user 65532, non-root, with an fsGroup for its volume")
	}

	// The data volume is a claim per pod, mounted where the node keeps it.
	if len(spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("want one volume claim template, have %d", len(spec.VolumeClaimTemplates))
	}
	claim := spec.VolumeClaimTemplates[0]
	if claim.Spec.Resources.Requests.Storage().IsZero() {
		t.Errorf("the volume claim asks for no storage")
	}
	dataDir := ""
	for _, e := range c.Env {
		if e.Name == "KVD_DATA_DIR" {
			dataDir = e.Value
		}
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == claim.Name && vm.MountPath == dataDir }) {
		t.Errorf("the claim %q is not mounted at the data dir %q", claim.Name, dataDir)
	}
	if v := c.Env; !slices.ContainsFunc(v, func(e corev1.EnvVar) bool { return e.Name == "KVD_LISTEN" && strings.HasPrefix(e.Value, "0.0.0.0:") }) {
		t.Errorf("kvd must listen on a wildcard address in a pod (KVD_LISTEN)")
	}

	// The disruption budget keeps a quorum of the voters.
	pdb := m.pdbs[0]
	psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !psel.Matches(podLabels) {
		t.Errorf("the PodDisruptionBudget does not select the pods")
	}
	quorum := replicas/2 + 1
	switch {
	case pdb.Spec.MaxUnavailable != nil:
		if replicas-pdb.Spec.MaxUnavailable.IntValue() < quorum {
			t.Errorf("maxUnavailable %s leaves fewer than a quorum of %d", pdb.Spec.MaxUnavailable, quorum)
		}
	case pdb.Spec.MinAvailable != nil:
		if pdb.Spec.MinAvailable.IntValue() < quorum {
			t.Errorf("minAvailable %s is less than a quorum of %d", pdb.Spec.MinAvailable, quorum)
		}
	default:
		t.Errorf("the PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
	}
}

// TestStrictDecodingCatchesMistakes: the check above is only worth
// something if a misspelt field fails it.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	bad := []byte("apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: x\nspec:\n  podManagmentPolicy: Parallel\n")
	var ss appsv1.StatefulSet
	if err := yaml.UnmarshalStrict(bad, &ss); err == nil {
		t.Fatal("a misspelt field was accepted")
	}
	badType := []byte("apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: x\nspec:\n  replicas: three\n")
	if err := yaml.UnmarshalStrict(badType, &ss); err == nil {
		t.Fatal("a string for an integer was accepted")
	}
}
