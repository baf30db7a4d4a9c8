package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/vcluster"
)

// TestRealVClusterDeployedEtcdByName is the by-name workflow against the real
// loft-sh/vcluster v0.30.0 with controlPlane.backingStore.etcd.deploy.enabled: the
// chart's etcd StatefulSet NAME-etcd keeps the state (TLS with the certificates in
// Secret NAME-certs) and the control plane is a Deployment with an emptyDir /data:
//
//   - `vcsnap snapshot create VC -n NS s3://...` finds the Deployment, runs the
//     engine in a Job (no data volume; NAME-certs mounted) that reads the deployed
//     etcd over TLS, and lands a verified bundle;
//   - objects are changed, deleted (the Deployment too) and added;
//   - `vcsnap restore VC -n NS s3://...` pauses the Deployment, restores into the
//     running etcd through a Job, resumes it; the virtual API (client-go) serves
//     exactly the captured objects and the syncer runs the Deployment's pod on the
//     host again.
func TestRealVClusterDeployedEtcdByName(t *testing.T) {
	rig.RequireIntegration(t)
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-real-etcd", rig.ImageVCSnap, rig.ImageVClusterK8s, rig.ImageVClusterOSS, rig.ImageVClusterEtcd)
	const name, hostNS, ns = "vc1", "team-e", "shop"
	vc := rig.InstallRealVCluster(t, r.host, r.node, name, hostNS, rig.RealVClusterDeployedEtcdValues(r.host.StorageClass))
	sw.lap("helm install to Ready")
	if vc.Workload != "Deployment" || vc.EtcdStatefulSet != name+"-etcd" {
		t.Fatalf("the chart made %s %s and etcd %q; want a Deployment and StatefulSet %s-etcd", vc.Workload, name, vc.EtcdStatefulSet, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	must := mustOK(t)

	// The virtual cluster's content.
	shop{configMaps: map[string]map[string]string{"cm-0": {"color": "blue"}, "cm-1": {"feature.x": "on"}}, password: "s3cr3t-before"}.create(t, ctx, vcs, ns)
	firstPod := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	sw.lap("fill + synced pod running")
	before := captureObjects(t, ctx, vcs, ns)
	t.Logf("captured %d objects in virtual namespace %s; host pod %s", len(before), ns, firstPod.Name)

	// The snapshot.
	store := r.podStoreURL(name + "/real-etcd")
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, "--image", rig.VCSnapImageRef}
	var created snapshot.CreateResult
	r.cli.mustJSON(t, &created, append(append([]string{"snapshot", "create", name}, kube...), store)...)
	sw.lap("snapshot by name")
	var verified snapshot.VerifyResult
	r.cli.mustJSON(t, &verified, "snapshot", "verify", store)
	src := verified.Manifest.Source
	if verified.Manifest.Keys != created.Manifest.Keys || verified.Manifest.Keys < 50 || src.Datastore != "etcd" ||
		src.VClusterName != name || src.VClusterNamespace != hostNS || src.KubernetesVersion != rig.VClusterK8sTag ||
		src.VClusterVersion != rig.VClusterOSSTag {
		t.Fatalf("bundle manifest: %d keys (create said %d), source %+v; want the etcd of %s/%s, Kubernetes %s, vcluster %s",
			verified.Manifest.Keys, created.Manifest.Keys, src, hostNS, name, rig.VClusterK8sTag, rig.VClusterOSSTag)
	}
	t.Logf("bundle: %d keys, revision %d, source %+v", verified.Manifest.Keys, verified.Manifest.Revision, src)
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the snapshot")

	// Change, delete, add.
	mutateShop(t, ctx, vcs, hostCS, name, hostNS, ns, false)
	if diff := diffCaptured(before, captureObjects(t, ctx, vcs, ns)); diff == "" {
		t.Fatal("the changes did not change the captured objects")
	}
	sw.lap("change, delete, add")

	// The restore.
	res := r.cli.run(t, append(append([]string{"restore", name}, kube...), "--dry-run", store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "[dry-run] pause") {
		t.Fatalf("restore dry run: %s", res)
	}
	t.Logf("restore plan:\n%s", res.Stdout)
	var restored struct {
		Restore *restore.Result `json:"restore"`
	}
	r.cli.mustJSON(t, &restored, append(append([]string{"restore", name}, kube...), store)...)
	sw.lap("restore by name")
	rr := restored.Restore
	if rr == nil || rr.Revision <= rr.PreviousRevision || rr.SafetyBackup == "" {
		t.Fatalf("restore result %+v: want the revision moved forward and a safety backup", rr)
	}
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the restore")
	dep, err := hostCS.AppsV1().Deployments(hostNS).Get(ctx, name, metav1.GetOptions{})
	must(dep, err)
	if _, paused := dep.Annotations[vcluster.PausedReplicasAnnotation]; paused || dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Fatalf("after the restore: Deployment replicas %v, annotations %v; want 1, not paused", dep.Spec.Replicas, dep.Annotations)
	}
	vc.WaitReady(t, 3*time.Minute) // a new pod, a new IP
	sw.lap("Ready again")
	vcs = kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	if diff := diffCaptured(before, captureObjects(t, ctx, vcs, ns)); diff != "" {
		t.Fatalf("the restored vcluster serves other objects than the snapshot's:\n%s", diff)
	}
	if _, err := vcs.CoreV1().Namespaces().Get(ctx, "after-snapshot", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace after-snapshot, created after the snapshot: %v; want NotFound", err)
	}
	pod := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	t.Logf("the syncer runs the Deployment's pod on the host again: %s on %s", pod.Name, pod.Spec.NodeName)
	sw.lap("compare + host pod")
	t.Logf("timings: real vcluster Ready %.1fs after helm install; whole test %s", vc.ReadyAfter.Seconds(), sw.summary())
}
