package rig

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestNode runs a real node and a Job on it: vcsnap's own image, a PVC
// mounted through the test CSI driver's node side, a server on the test
// machine reached through the node's veth, and logs read back through the
// apiserver from the kubelet. The node's teardown checks that nothing remains.
func TestNode(t *testing.T) {
	host := StartHost(t, HostOptions{})
	node := StartNode(t, host, NodeOptions{Images: []string{ImageVCSnap}})

	// The node namespace has no default route; the root namespace routes the pod CIDR to the node only.
	if out, err := run("ip", "-n", node.NetNS, "route", "show", "default"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("node namespace default route: %q %v", out, err)
	}
	if out, err := run("ip", "route", "show", node.PodCIDR); err != nil || !strings.Contains(out, "via "+node.NodeIP) {
		t.Fatalf("root namespace route to %s: %q %v", node.PodCIDR, out, err)
	}

	etcd := StartEtcd(t)
	cli := etcd.Client(t)
	ctx := ctxT(t, 5*time.Minute)
	for i, k := range []string{"/registry/configmaps/default/a", "/registry/configmaps/default/b", "/registry/secrets/default/c"} {
		if _, err := cli.Put(ctx, k, strings.Repeat("v", 100*(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(etcd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	etcdForPods := node.Expose(t, u.Host)

	cs := kubernetes.NewForConfigOrDie(host.RESTConfig())
	const ns = "node-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	WaitPVCBound(t, host.RESTConfig(), ns, "data", time.Minute)

	job := VCSnapJob(VCSnapJobOptions{
		Name: "snap", Namespace: ns, PVC: "data",
		Args: []string{"snapshot", "create", "--datastore", "etcd://" + etcdForPods, "file:///data/bundles/snap1"},
	})
	res := RunJob(t, host.RESTConfig(), job, 3*time.Minute)
	t.Logf("Job %s on the node: succeeded=%t in %v; log:\n%s", res.Pod, res.Succeeded, res.Duration.Round(time.Millisecond), res.Logs)
	if !res.Succeeded {
		t.Fatal("the Job failed")
	}
	if !strings.Contains(res.Logs, "complete") {
		t.Errorf("unexpected Job log: %s", res.Logs)
	}
	// The bundle the pod wrote is in the volume's directory on the CSI driver's side.
	bundle := filepath.Join(host.PVCVolumeDir(t, ns, "data"), "bundles", "snap1")
	st, err := os.Stat(bundle)
	if err != nil || st.Size() == 0 {
		t.Fatalf("bundle written by the pod: %v", err)
	}
	t.Logf("bundle %s: %d bytes", bundle, st.Size())
}
