package translate

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	networkingv1beta1 "k8s.io/api/networking/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// These tests feed the rules values encoded exactly as the kube-apiserver stores them
// (the same serializers); translate_integration_test.go proves it against a real one.

func storedProto(t *testing.T, obj runtime.Object) []byte {
	t.Helper()
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	var b bytes.Buffer
	if err := protoSerializer.Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func storedJSON(t *testing.T, obj map[string]any) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := unstructured.UnstructuredJSONScheme.Encode(&unstructured.Unstructured{Object: obj}, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func decodeProto[T runtime.Object](t *testing.T, v []byte) T {
	t.Helper()
	obj, _, err := protoSerializer.Decode(v, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return obj.(T)
}

// apply runs the rules on a copy of the record and returns whether it is kept and its
// value; it checks the rules did not write into the record's original slices.
func apply(t *testing.T, r *Rules, key string, value []byte) (bool, []byte) {
	t.Helper()
	orig := append([]byte(nil), value...)
	kv := &bundle.KeyValue{Key: []byte(key), Value: value}
	keep, err := r.Apply(kv)
	if err != nil {
		t.Fatalf("Apply(%s): %v", key, err)
	}
	if string(kv.Key) != key {
		t.Fatalf("Apply changed the key %s to %s", key, kv.Key)
	}
	if !bytes.Equal(value, orig) {
		t.Fatalf("Apply(%s) wrote into the record's value slice", key)
	}
	return keep, kv.Value
}

func newHostRules() *Rules {
	return ForNewHost("team-a", "vc1", "team-b", "vc2", "10.200.0.0/16")
}

func TestHostNamesInMappings(t *testing.T) {
	r := newHostRules()
	long := strings.Repeat("a", 50)
	cases := []struct {
		name                string
		vNS, vName          string
		hostNS, hostName    string
		wantNS, wantName    string
		key                 string
		group, version, kin string
	}{
		{"namespaced", "default", "web", "team-a", "web-x-default-x-vc1", "team-b", "web-x-default-x-vc2", "/vcluster/mappings/v1/configmaps/default/web", "", "v1", "ConfigMap"},
		{"long hashed name", "default", long, "team-a", SafeConcatName(long, "x", "default", "x", "vc1"), "team-b", SafeConcatName(long, "x", "default", "x", "vc2"), "/vcluster/mappings/v1/secret/default/" + long, "", "v1", "Secret"},
		{"short name", "default", "svc", "team-a", shortHostName("svc", "default", "vc1"), "team-b", shortHostName("svc", "default", "vc2"), "/vcluster/mappings/v1/service/default/svc", "", "v1", "Service"},
		{"cluster scoped", "", "fast", "", "vcluster-fast-x-team-a-x-vc1", "", "vcluster-fast-x-team-b-x-vc2", "/vcluster/mappings/storage.k8s.io/v1/storageclass/fast", "storage.k8s.io", "v1", "StorageClass"},
		{"imported from the host", "default", "shared", "team-a", "shared", "team-b", "shared", "/vcluster/mappings/v1/configmap/default/shared", "", "v1", "ConfigMap"},
		{"another host namespace", "default", "x", "elsewhere", "x", "elsewhere", "x", "/vcluster/mappings/v1/configmap/default/x", "", "v1", "ConfigMap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// vcluster's own encoding (json.Marshal of its store.Mapping)
			value := []byte(`{"Group":"` + c.group + `","Version":"` + c.version + `","Kind":"` + c.kin + `","VirtualName":{"Namespace":"` + c.vNS + `","Name":"` + c.vName + `"},"HostName":{"Namespace":"` + c.hostNS + `","Name":"` + c.hostName + `"},"references":[{"Group":"","Version":"v1","Kind":"Pod","VirtualName":{"Namespace":"default","Name":"p"},"HostName":{"Namespace":"team-a","Name":"p-x-default-x-vc1"}}]}`)
			keep, got := apply(t, r, c.key, value)
			if !keep {
				t.Fatal("mapping dropped")
			}
			var m struct {
				VirtualName, HostName namespacedName
				References            []struct{ HostName namespacedName } `json:"references"`
			}
			if err := json.Unmarshal(got, &m); err != nil {
				t.Fatal(err)
			}
			if m.HostName != (namespacedName{c.wantNS, c.wantName}) || m.VirtualName != (namespacedName{c.vNS, c.vName}) {
				t.Fatalf("mapping %s -> %+v, want host %s/%s", value, m, c.wantNS, c.wantName)
			}
			if len(m.References) != 1 || m.References[0].HostName != (namespacedName{"team-b", "p-x-default-x-vc2"}) {
				t.Fatalf("references: %+v", m.References)
			}
		})
	}
	// The same name and namespace: mappings are left byte for byte.
	same := ForNewHost("team-a", "vc1", "team-a", "vc1", "")
	v := []byte(`{"Group":"","Version":"v1","Kind":"ConfigMap","VirtualName":{"Namespace":"default","Name":"web"},"HostName":{"Namespace":"team-a","Name":"web-x-default-x-vc1"}}`)
	if _, got := apply(t, same, "/vcluster/mappings/v1/configmap/default/web", v); !bytes.Equal(got, v) {
		t.Fatalf("unchanged mapping rewritten: %s", got)
	}
	if r.Stats().HostNames != 6 { // every case: the reference changes too
		t.Fatalf("stats %+v: want 6 host names changed", r.Stats())
	}
	// A value that is not a mapping is kept as it is, and counted.
	if keep, got := apply(t, r, "/vcluster/mappings/v1/x/y", []byte("not json")); !keep || string(got) != "not json" || r.Stats().Undecodable != 1 {
		t.Fatalf("a mapping that is not JSON: kept %v, %q, stats %+v", keep, got, r.Stats())
	}
}

func TestHostNameAnnotations(t *testing.T) {
	r := newHostRules()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "u1",
		Annotations: map[string]string{HostNameAnnotation: "web-x-default-x-vc1", HostNamespaceAnnotation: "team-a", "other": "kept"}},
		Data: map[string]string{"k": "v"}}
	keep, got := apply(t, r, "/registry/configmaps/default/web", storedProto(t, cm))
	if !keep {
		t.Fatal("dropped")
	}
	out := decodeProto[*corev1.ConfigMap](t, got)
	if out.Annotations[HostNameAnnotation] != "web-x-default-x-vc2" || out.Annotations[HostNamespaceAnnotation] != "team-b" ||
		out.Annotations["other"] != "kept" || out.Data["k"] != "v" || out.UID != "u1" {
		t.Fatalf("translated ConfigMap: %+v", out.ObjectMeta)
	}
	// A custom resource, stored as JSON.
	cr := map[string]any{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": map[string]any{
		"name": "w", "namespace": "apps", "annotations": map[string]any{HostNameAnnotation: "w-x-apps-x-vc1", HostNamespaceAnnotation: "team-a"}},
		"spec": map[string]any{"size": int64(3), "ratio": 0.5}}
	keep, got = apply(t, r, "/registry/example.com/widgets/apps/w", storedJSON(t, cr))
	if !keep {
		t.Fatal("dropped")
	}
	var u map[string]any
	if err := json.Unmarshal(got, &u); err != nil {
		t.Fatal(err)
	}
	ann := u["metadata"].(map[string]any)["annotations"].(map[string]any)
	if ann[HostNameAnnotation] != "w-x-apps-x-vc2" || ann[HostNamespaceAnnotation] != "team-b" || u["spec"].(map[string]any)["ratio"] != 0.5 {
		t.Fatalf("translated custom resource: %s", got)
	}
	if !bytes.HasSuffix(got, []byte("}\n")) {
		t.Fatalf("custom resource not written as the apiserver does (JSON and a newline): %q", got)
	}
}

func TestPodsRescheduled(t *testing.T) {
	r := newHostRules()
	now := metav1.Now()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", Labels: map[string]string{"app": "x"}},
		Spec: corev1.PodSpec{NodeName: "old-node", Containers: []corev1.Container{{Name: "c", Image: "img"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "192.168.1.5", PodIP: "10.244.0.7", StartTime: &now,
			QOSClass: corev1.PodQOSBestEffort, ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Ready: true}}}}
	_, got := apply(t, r, "/registry/pods/default/p", storedProto(t, pod))
	out := decodeProto[*corev1.Pod](t, got)
	want := corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort}
	if out.Spec.NodeName != "" || out.Status.Phase != want.Phase || out.Status.QOSClass != want.QOSClass || out.Status.PodIP != "" ||
		out.Status.HostIP != "" || len(out.Status.ContainerStatuses) != 0 || out.Status.StartTime != nil {
		t.Fatalf("pod after the rule: nodeName %q status %+v", out.Spec.NodeName, out.Status)
	}
	if out.Labels["app"] != "x" || len(out.Spec.Containers) != 1 {
		t.Fatalf("the rule changed more than scheduling: %+v", out)
	}
	// Off: the pod is kept byte for byte.
	off := newHostRules()
	off.ClearPodScheduling = false
	v := storedProto(t, pod)
	if _, got := apply(t, off, "/registry/pods/default/p", v); !bytes.Equal(got, v) {
		t.Fatal("pod changed with ClearPodScheduling off")
	}
	// A finished pod is kept as it is: reset to Pending it would run again.
	done := pod.DeepCopy()
	done.Status.Phase = corev1.PodSucceeded
	v = storedProto(t, done)
	if _, got := apply(t, r, "/registry/pods/default/done", v); !bytes.Equal(got, v) {
		t.Fatal("a finished pod changed")
	}
	if r.Stats().Pods != 1 {
		t.Fatalf("stats: %+v", r.Stats())
	}
}

func TestNodesAndRootCADropped(t *testing.T) {
	r := newHostRules()
	node := storedProto(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	if keep, _ := apply(t, r, "/registry/minions/n1", node); keep {
		t.Fatal("Node kept")
	}
	ca := storedProto(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCAConfigMap, Namespace: "apps"}, Data: map[string]string{"ca.crt": "PEM"}})
	if keep, _ := apply(t, r, "/registry/configmaps/apps/kube-root-ca.crt", ca); keep {
		t.Fatal("kube-root-ca.crt kept")
	}
	other := storedProto(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt-copy", Namespace: "apps"}})
	if keep, got := apply(t, r, "/registry/configmaps/apps/kube-root-ca.crt-copy", other); !keep || !bytes.Equal(got, other) {
		t.Fatal("another ConfigMap changed")
	}
	off := &Rules{}
	if keep, _ := apply(t, off, "/registry/minions/n1", node); !keep {
		t.Fatal("zero Rules dropped a Node")
	}
	if s := r.Stats(); s.Nodes != 1 || s.RootCAs != 1 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestServicesReaddressed(t *testing.T) {
	r := newHostRules() // target 10.200.0.0/16
	svc := func(name string, typ corev1.ServiceType, ips ...string) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{{Port: 80}}}}
		if len(ips) > 0 {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
		}
		if typ == corev1.ServiceTypeExternalName {
			s.Spec.ExternalName = "example.com"
		}
		return s
	}
	outside := storedProto(t, svc("old", corev1.ServiceTypeClusterIP, "10.96.0.10"))
	_, got := apply(t, r, "/registry/services/specs/default/old", outside)
	if out := decodeProto[*corev1.Service](t, got); out.Spec.ClusterIP != "" || len(out.Spec.ClusterIPs) != 0 || len(out.Spec.Ports) != 1 {
		t.Fatalf("service outside the target range: %+v", out.Spec)
	}
	for name, s := range map[string]*corev1.Service{
		"inside":       svc("inside", corev1.ServiceTypeClusterIP, "10.200.3.4"),
		"headless":     svc("headless", corev1.ServiceTypeClusterIP, "None"),
		"externalname": svc("externalname", corev1.ServiceTypeExternalName),
	} {
		v := storedProto(t, s)
		if keep, got := apply(t, r, "/registry/services/specs/default/"+name, v); !keep || !bytes.Equal(got, v) {
			t.Fatalf("%s service changed", name)
		}
	}
	// Dual stack: one family outside clears both.
	dual := ForNewHost("a", "b", "a", "b", "10.200.0.0/16,fd00:200::/108")
	_, got = apply(t, dual, "/registry/services/specs/default/d", storedProto(t, svc("d", corev1.ServiceTypeClusterIP, "10.200.0.9", "fd00:96::9")))
	if out := decodeProto[*corev1.Service](t, got); out.Spec.ClusterIP != "" || len(out.Spec.ClusterIPs) != 0 {
		t.Fatalf("dual-stack service half outside: %+v", out.Spec)
	}
	v := storedProto(t, svc("d2", corev1.ServiceTypeClusterIP, "10.200.0.9", "fd00:200::9"))
	if _, got := apply(t, dual, "/registry/services/specs/default/d2", v); !bytes.Equal(got, v) {
		t.Fatal("dual-stack service inside both ranges changed")
	}
	// Endpoints are not Services.
	ep := storedProto(t, &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: "default"}})
	if _, got := apply(t, r, "/registry/services/endpoints/default/old", ep); !bytes.Equal(got, ep) {
		t.Fatal("endpoints changed")
	}
	if r.Stats().Services != 1 {
		t.Fatalf("stats: %+v", r.Stats())
	}
}

func TestIPAllocationsDropped(t *testing.T) {
	r := newHostRules() // target 10.200.0.0/16
	keepOf := func(key string, obj runtime.Object) bool {
		keep, _ := apply(t, r, key, storedProto(t, obj))
		return keep
	}
	if keepOf("/registry/ranges/serviceips", &corev1.RangeAllocation{Range: "10.96.0.0/16", Data: []byte{1}}) {
		t.Fatal("the old range's bitmap was kept")
	}
	if !keepOf("/registry/ranges/serviceips", &corev1.RangeAllocation{Range: "10.200.0.0/16", Data: []byte{1}}) {
		t.Fatal("the target range's bitmap was dropped")
	}
	if !keepOf("/registry/ranges/servicenodeports", &corev1.RangeAllocation{Range: "30000-32767", Data: []byte{1}}) {
		t.Fatal("the node port bitmap was dropped")
	}
	if keepOf("/registry/ipaddresses/10.96.0.10", &networkingv1beta1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: "10.96.0.10"}}) ||
		keepOf("/registry/ipaddresses/10.96.0.11", &networkingv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: "10.96.0.11"}}) {
		t.Fatal("an IPAddress outside the target range was kept")
	}
	if !keepOf("/registry/ipaddresses/10.200.0.10", &networkingv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: "10.200.0.10"}}) {
		t.Fatal("an IPAddress inside the target range was dropped")
	}
	if keepOf("/registry/servicecidrs/kubernetes", &networkingv1beta1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec: networkingv1beta1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16"}}}) {
		t.Fatal("the old default ServiceCIDR was kept")
	}
	if !keepOf("/registry/servicecidrs/kubernetes", &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.200.0.0/16"}}}) {
		t.Fatal("the target's default ServiceCIDR was dropped")
	}
	if r.Stats().IPAllocations != 4 {
		t.Fatalf("stats: %+v", r.Stats())
	}
}

// TestUntouchedValues: values no rule applies to are passed through as the very same
// bytes, whatever they hold (binary, encrypted, other prefixes).
func TestUntouchedValues(t *testing.T) {
	r := newHostRules()
	for key, v := range map[string][]byte{
		"/registry/secrets/default/s":          []byte("k8s:enc:aescbc:v1:key1:\x00\x01"),
		"/registry/deployments/default/d":      storedProto(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}),
		"compact_rev_key":                      []byte("42"),
		"/other/prefix/pods/x":                 []byte("\xff\xfe"),
		"/registry/example.com/widgets/ns/w":   []byte(`{"apiVersion":"example.com/v1","kind":"Widget"}` + "\n"),
		"/registry/pods/default/undecodable-p": []byte("k8s:enc:kms:v2:x"),
	} {
		if keep, got := apply(t, r, key, v); !keep || !bytes.Equal(got, v) {
			t.Fatalf("%s: kept %v, value %q", key, keep, got)
		}
	}
	if r.Stats().Undecodable != 1 {
		t.Fatalf("stats: %+v (the encrypted pod counts as undecodable)", r.Stats())
	}
}

// TestRefusesLossyReencode: a value holding a field this build does not know (here a
// protobuf field number no Kubernetes type uses) is refused rather than silently cut.
func TestRefusesLossyReencode(t *testing.T) {
	v := storedProto(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "d"}, Spec: corev1.PodSpec{NodeName: "n"}})
	// Append field 1000 (varint) to the Unknown envelope's raw object: rebuild it.
	obj, _, _ := protoSerializer.Decode(v, nil, nil)
	pod := obj.(*corev1.Pod)
	raw, err := pod.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, 0xc0, 0x3e, 0x01) // field 1000, wire type 0, value 1
	unk := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "v1", Kind: "Pod"}, Raw: raw}
	body, err := unk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	value := append(append([]byte(nil), protobufMagic...), body...)
	_, err = newHostRules().Apply(&bundle.KeyValue{Key: []byte("/registry/pods/d/p"), Value: value})
	if err == nil || !strings.Contains(err.Error(), "does not know") {
		t.Fatalf("lossy re-encode: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, r := range []*Rules{
		{FromName: "a"},
		{FromHostNamespace: "a", ToHostNamespace: "b"},
		{FromName: "a", ToName: "b"},
		{HostServiceCIDR: "10.0.0.0/33"},
		{ServiceCIDR: "nope"},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
	if err := (&Rules{ServiceCIDR: "10.0.0.0/12, fd00::/108"}).Validate(); err != nil {
		t.Fatal(err)
	}
	// A custom --etcd-prefix, with or without its slash.
	custom := &Rules{DropNodes: true, Prefix: "/k3s"}
	if keep, _ := apply(t, custom, "/k3s/minions/n1", []byte("x")); keep {
		t.Fatal("a Node under a custom prefix was kept")
	}
	if keep, _ := apply(t, custom, "/registry/minions/n1", []byte("x")); !keep {
		t.Fatal("a key outside the custom prefix was dropped")
	}
}

func TestNames(t *testing.T) {
	if got := SafeConcatName("a", "x", "b"); got != "a-x-b" {
		t.Fatal(got)
	}
	long := SafeConcatName(strings.Repeat("n", 60), "x", "default", "x", "vc")
	if len(long) != 63 || !strings.HasPrefix(long, strings.Repeat("n", 52)+"-") {
		t.Fatalf("long name %q (%d)", long, len(long))
	}
	if s := shortHostName("svc", "default", "vc1"); len(s) != 14 || s[0] != 'v' {
		t.Fatalf("short name %q", s)
	}
	if base36([]byte{0, 1}) != "01" || base36([]byte{36}) != "10" {
		t.Fatalf("base36: %q %q", base36([]byte{0, 1}), base36([]byte{36}))
	}
}
