package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

var protoCodec = protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)

// stored encodes an object as the kube-apiserver stores it (protobuf, k8s\0 magic).
func stored(t *testing.T, obj runtime.Object) string {
	t.Helper()
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	var b bytes.Buffer
	if err := protoCodec.Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestCLIRestoreTranslate: restore --datastore with the translation flags applies the
// rules (translate's own tests prove each rule against a real apiserver): the source
// namespace and name come from the bundle's manifest, Nodes and kube-root-ca.crt are left
// out, pods lose their node, a Service outside --target-service-cidr its address,
// vcluster's name map gets the new host names, and everything else is copied as it was.
func TestCLIRestoreTranslate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	ctx := context.Background()
	objects := map[string]string{
		"/registry/minions/node-1":                   stored(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}),
		"/registry/configmaps/apps/kube-root-ca.crt": stored(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: "apps"}}),
		"/registry/configmaps/apps/settings":         stored(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings", Namespace: "apps"}, Data: map[string]string{"a": "b"}}),
		"/registry/pods/apps/web": stored(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"},
			Spec: corev1.PodSpec{NodeName: "node-1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5"}}),
		"/registry/services/specs/apps/web": stored(t, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}}}),
		"/vcluster/mappings/v1/configmap/apps/settings": `{"Group":"","Version":"v1","Kind":"ConfigMap","VirtualName":{"Namespace":"apps","Name":"settings"},"HostName":{"Namespace":"team-a","Name":"settings-x-apps-x-vc1"}}`,
	}
	for k, v := range objects {
		if _, err := srcCli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	url := "file://" + filepath.Join(t.TempDir(), "snap")
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "--vcluster-namespace", "team-a", "--vcluster-name", "vc1", url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	dst, dstCli := startEtcd(t)
	if r := vcsnap(t, nil, "restore", "--datastore", dst.URL, "--translate-namespace", "team-b", "--target-service-cidr", "bad", url); r.code != exitUsage {
		t.Fatalf("restore with a bad CIDR: %+v", r)
	}
	r := vcsnap(t, nil, "restore", "--datastore", dst.URL, "--translate-namespace", "team-b", "--translate-name", "vc2",
		"--target-service-cidr", "10.200.0.0/16", "-o", "json", url)
	var out struct {
		DroppedKeys int64
		Translation map[string]int64
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("restore: %+v", r)
	}
	if out.DroppedKeys != 2 || out.Translation["pods"] != 1 || out.Translation["services"] != 1 || out.Translation["hostNames"] != 1 {
		t.Fatalf("restore output: %s", r.stdout)
	}
	got := map[string][]byte{}
	resp, err := dstCli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = kv.Value
	}
	if _, ok := got["/registry/minions/node-1"]; ok {
		t.Error("Node restored")
	}
	if _, ok := got["/registry/configmaps/apps/kube-root-ca.crt"]; ok {
		t.Error("kube-root-ca.crt restored")
	}
	if string(got["/registry/configmaps/apps/settings"]) != objects["/registry/configmaps/apps/settings"] {
		t.Error("an untouched ConfigMap changed")
	}
	pod, _, err := protoCodec.Decode(got["/registry/pods/apps/web"], nil, nil)
	if err != nil || pod.(*corev1.Pod).Spec.NodeName != "" || pod.(*corev1.Pod).Status.PodIP != "" {
		t.Errorf("restored pod: %+v %v", pod, err)
	}
	svc, _, err := protoCodec.Decode(got["/registry/services/specs/apps/web"], nil, nil)
	if err != nil || svc.(*corev1.Service).Spec.ClusterIP != "" {
		t.Errorf("restored service: %+v %v", svc, err)
	}
	if m := string(got["/vcluster/mappings/v1/configmap/apps/settings"]); !strings.Contains(m, `"HostName":{"Namespace":"team-b","Name":"settings-x-apps-x-vc2"}`) {
		t.Errorf("restored mapping: %s", m)
	}
	// The human output says what was translated.
	dst2, _ := startEtcd(t)
	if r := vcsnap(t, nil, "restore", "--datastore", dst2.URL, "--new-host", url); r.code != exitOK || !strings.Contains(r.stdout, "1 pods to reschedule") {
		t.Fatalf("restore --new-host: %+v", r)
	}
}

// TestCLIRestoreTargetUsage: --target-* belong to a restore by NAME and do their own
// translation; misuse is a usage error before anything is contacted.
func TestCLIRestoreTargetUsage(t *testing.T) {
	for _, args := range [][]string{
		{"restore", "vc1", "-n", "a", "--target-name", "vc2", "--translate-name", "vc1=vc3", "s3://b/k"},
		{"restore", "vc1", "-n", "a", "--target-context", "other", "s3://b/k"},
		{"restore", "--datastore", "etcd://127.0.0.1:1", "--target-namespace", "b", "file:///tmp/x"},
	} {
		if r := vcsnap(t, nil, args...); r.code != exitUsage || !strings.Contains(r.stderr, "--target") {
			t.Errorf("%v: %+v, want a usage error", args, r)
		}
	}
}
