package translate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

const targetCIDR = "10.200.0.0/16" // the new host's service range; the rig's is 10.96.0.0/16

var gadgets = schema.GroupVersionResource{Group: rig.FillCRDGroup, Version: "v1", Resource: "gadgets"}

// TestRestoreOntoNewHost is the proof of every rule against real components: a virtual
// control plane (kube-apiserver on etcd) is filled through its API with a realistic
// cluster plus what a vcluster leaves in its datastore (a Node, kube-root-ca.crt
// ConfigMaps, objects carrying the syncer's host-name annotations, the name map under
// /vcluster/mappings/); vcsnap snapshots it, restores it with ForNewHost (vc1 in team-a
// -> vc2 in team-b, service range 10.96.0.0/16 -> 10.200.0.0/16) into a fresh kine
// SQLite file (vcluster's default datastore), and
// a kube-apiserver with the new service range started on the restored datastore serves:
// exactly the objects it served before, except the ones the rules name, changed exactly
// as the rules say (DiffDumps of the expected and the served dumps is empty). In the
// datastore itself every record no rule touched holds the very bytes captured.
func TestRestoreOntoNewHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	v := rig.StartVirtual(t, rig.KindEtcd)
	cfg := v.RESTConfig()
	fill := rig.FillRealistic(t, cfg, 61)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := fill.Namespaces[0]

	// What a vcluster leaves in its datastore on the old host.
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "rig-node"}}, metav1.CreateOptions{})
	must("create Node", err)
	for _, n := range append([]string{"default", "kube-system"}, fill.Namespaces...) {
		_, err := cs.CoreV1().ConfigMaps(n).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCAConfigMap},
			Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\nold CA\n-----END CERTIFICATE-----\n"}}, metav1.CreateOptions{})
		must("create kube-root-ca.crt", err)
	}
	_, err = cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "synced",
		Annotations: map[string]string{HostNameAnnotation: "synced-x-" + ns + "-x-vc1", HostNamespaceAnnotation: "team-a"}},
		Data: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	must("create annotated ConfigMap", err)
	dyn := dynamic.NewForConfigOrDie(cfg)
	_, err = dyn.Resource(gadgets).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "rig.vcsnap.test/v1", "kind": "Gadget",
		"metadata": map[string]any{"name": "imported", "annotations": map[string]any{HostNameAnnotation: "vcluster-imported-x-team-a-x-vc1"}},
		"spec":     map[string]any{"model": "x", "ratio": 0.25},
	}}, metav1.CreateOptions{})
	must("create annotated Gadget", err)
	_, err = cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "headless"},
		Spec: corev1.ServiceSpec{ClusterIP: "None", Selector: map[string]string{"app": "x"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	must("create headless Service", err)
	// Pods as a kubelet left them: one running, one finished.
	for _, p := range []struct {
		name  string
		phase corev1.PodPhase
	}{{"running", corev1.PodRunning}, {"finished", corev1.PodSucceeded}} {
		pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name},
			Spec: corev1.PodSpec{NodeName: "rig-node", RestartPolicy: corev1.RestartPolicyNever, ServiceAccountName: "worker",
				Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}, metav1.CreateOptions{})
		must("create Pod", err)
		started := metav1.NewTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
		pod.Status = corev1.PodStatus{Phase: p.phase, HostIP: "192.168.10.2", PodIP: "10.244.0.9", StartTime: &started, QOSClass: corev1.PodQOSBestEffort,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: started}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Image: "busybox", ImageID: "sha256:x", Ready: p.phase == corev1.PodRunning}}}
		_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		must("set Pod status", err)
	}
	ecli := v.Datastore.Client(t)
	mappingKey := "/vcluster/mappings/v1/configmap/" + ns + "/synced"
	mappingValue := `{"Group":"","Version":"v1","Kind":"ConfigMap","VirtualName":{"Namespace":"` + ns + `","Name":"synced"},"HostName":{"Namespace":"team-a","Name":"synced-x-` + ns + `-x-vc1"}}`
	_, err = ecli.Put(ctx, mappingKey, mappingValue)
	must("write mapping", err)

	before := rig.DumpAll(t, cfg)
	t.Logf("filled and dumped %d objects in %s", len(before), time.Since(start).Round(time.Millisecond))
	v.StopAPIServer()
	captured := etcdKeys(t, ecli)

	// Every object the real apiserver wrote decodes without loss (every protobuf field
	// known to this build, JSON documents unchanged by a re-encode): a rule that rewrites
	// an object keeps the rest of it.
	decoded, objects := 0, 0
	for k, val := range captured {
		if !strings.HasPrefix(k, "/registry/") {
			continue
		}
		objects++
		_, err := decode(val)
		var undecodable errUndecodable
		if err != nil && !errors.As(err, &undecodable) {
			t.Errorf("%s: %v", k, err)
		}
		if err == nil {
			decoded++
		}
	}
	t.Logf("%d of %d stored values under /registry/ decode without loss (the others are not objects)", decoded, objects)

	store := "file://" + filepath.Join(t.TempDir(), "bundle")
	if _, err := snapshot.Create(ctx, snapshot.CreateOptions{Datastore: etcdURL(t, v.Datastore.EtcdEndpoint), Store: store}); err != nil {
		t.Fatal(err)
	}
	// The target: kine's SQLite file, vcluster's default datastore, written offline.
	dbPath := filepath.Join(t.TempDir(), "state.db")
	rules := ForNewHost("team-a", "vc1", "team-b", "vc2", targetCIDR)
	res, err := restore.Restore(ctx, restore.Options{Store: store, Datastore: "sqlite://" + dbPath, Transform: rules.Apply})
	if err != nil {
		t.Fatal(err)
	}
	kine := rig.StartKine(t, rig.SQLiteDSN(dbPath))
	st := rules.Stats()
	t.Logf("restored with the rules: %+v, %d keys left out", st, res.DroppedKeys)
	if st.Nodes != 1 || st.RootCAs != int64(2+len(fill.Namespaces)) || st.Pods == 0 || st.Services == 0 || st.HostNames != 3 ||
		st.IPAllocations != 1 || st.Undecodable != 0 || res.DroppedKeys != st.Nodes+st.RootCAs+st.IPAllocations {
		t.Fatalf("rule counts %+v, dropped %d", st, res.DroppedKeys)
	}

	// In the datastore: records no rule names are the captured bytes.
	restored := etcdKeys(t, rig.EtcdClient(t, kine.Endpoint, nil))
	var changed []string
	missing := 0
	for k, val := range captured {
		got, ok := restored[k]
		switch {
		case !ok:
			missing++
			if !strings.HasPrefix(k, "/registry/minions/") && !strings.HasSuffix(k, "/"+RootCAConfigMap) && k != "/registry/ranges/serviceips" {
				t.Errorf("%s was left out", k)
			}
		case !bytes.Equal(got, val):
			changed = append(changed, k)
			if !strings.HasPrefix(k, "/registry/pods/") && !strings.HasPrefix(k, "/registry/services/specs/") && k != mappingKey &&
				k != "/registry/configmaps/"+ns+"/synced" && k != "/registry/rig.vcsnap.test/gadgets/imported" {
				t.Errorf("%s changed but no rule names it", k)
			}
		}
	}
	if missing != int(res.DroppedKeys) {
		t.Errorf("%d keys missing from the target, the restore left out %d", missing, res.DroppedKeys)
	}
	t.Logf("%d records changed, %d left out, %d unchanged", len(changed), missing, len(captured)-missing-len(changed))
	var m struct{ HostName namespacedName }
	must("restored mapping", json.Unmarshal(restored[mappingKey], &m))
	if m.HostName != (namespacedName{"team-b", "synced-x-" + ns + "-x-vc2"}) {
		t.Fatalf("restored mapping: %s", restored[mappingKey])
	}

	// A kube-apiserver with the new host's service range, on the restored datastore.
	v.ServiceCIDR = targetCIDR
	v.StartAPIServerOn(t, kine.Endpoint)
	after := rig.DumpAll(t, v.RESTConfig())
	want := expectedAfterRules(t, before, ns)
	if d := rig.DiffDumps(want, after); d != "" {
		t.Fatalf("the restored cluster differs from what the rules say:\n%s", d)
	}
	// And the apiserver works with what the rules left: a new Service gets an address in
	// the new range, the headless one kept "None".
	services := kubernetes.NewForConfigOrDie(v.RESTConfig()).CoreV1().Services(ns)
	svc, err := services.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "new"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	must("create a Service after the restore", err)
	headless, err := services.Get(ctx, "headless", metav1.GetOptions{})
	must("get the headless Service", err)
	if !strings.HasPrefix(svc.Spec.ClusterIP, "10.200.") || headless.Spec.ClusterIP != "None" {
		t.Fatalf("new Service got %q, the headless one has %q", svc.Spec.ClusterIP, headless.Spec.ClusterIP)
	}
	// The target's range, as the by-name restore detects it on the target host.
	cidr, err := DetectServiceCIDR(ctx, kubernetes.NewForConfigOrDie(v.RESTConfig()), ns)
	if err != nil || cidr != targetCIDR {
		t.Fatalf("DetectServiceCIDR = %q, %v; want %s", cidr, err, targetCIDR)
	}
	if list, _ := services.List(ctx, metav1.ListOptions{}); len(list.Items) != countServices(before, ns)+1 {
		t.Fatalf("the probe left a Service behind: %d Services", len(list.Items))
	}
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))
}

// expectedAfterRules applies the rules' documented effects to a dump, independently of
// the rules' code: the JSON the apiserver serves.
func expectedAfterRules(t *testing.T, before map[string][]byte, ns string) map[string][]byte {
	t.Helper()
	want := map[string][]byte{}
	for k, raw := range before {
		parts := strings.Split(k, "/") // group/version/resource/namespace/name
		group, resource, name := parts[0], parts[2], parts[4]
		if group == "core" && (resource == "nodes" || resource == "configmaps" && name == RootCAConfigMap) {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		spec, _ := obj["spec"].(map[string]any)
		meta := obj["metadata"].(map[string]any)
		switch {
		case group == "core" && resource == "pods":
			if phase := obj["status"].(map[string]any)["phase"]; phase == "Succeeded" || phase == "Failed" {
				break
			}
			delete(spec, "nodeName")
			status := map[string]any{"phase": "Pending"}
			if q, ok := obj["status"].(map[string]any)["qosClass"]; ok {
				status["qosClass"] = q
			}
			obj["status"] = status
		case group == "core" && resource == "services":
			if ip, _ := spec["clusterIP"].(string); ip != "" && ip != "None" && !strings.HasPrefix(ip, "10.200.") {
				delete(spec, "clusterIP")
				delete(spec, "clusterIPs")
			}
		case k == "core/v1/configmaps/"+ns+"/synced":
			meta["annotations"] = map[string]any{HostNameAnnotation: "synced-x-" + ns + "-x-vc2", HostNamespaceAnnotation: "team-b"}
		case k == "rig.vcsnap.test/v1/gadgets//imported":
			meta["annotations"] = map[string]any{HostNameAnnotation: "vcluster-imported-x-team-b-x-vc2"}
		}
		b, err := json.MarshalIndent(obj, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		want[k] = b
	}
	return want
}

func countServices(dump map[string][]byte, ns string) int {
	n := 0
	for k := range dump {
		if strings.HasPrefix(k, "core/v1/services/"+ns+"/") {
			n++
		}
	}
	return n
}

func etcdKeys(t *testing.T, cli *clientv3.Client) map[string][]byte {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/", clientv3.WithPrefix()) // kine lists prefixes only
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

func etcdURL(t *testing.T, endpoint string) string {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		t.Fatalf("endpoint %q: want a plain http etcd", endpoint)
	}
	return fmt.Sprintf("etcd://%s", u.Host)
}
