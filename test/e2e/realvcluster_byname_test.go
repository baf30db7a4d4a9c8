package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/vcluster"
)

// TestRealVClusterSQLiteByName is the by-name workflow against the real
// loft-sh/vcluster v0.30.0, installed with `helm install` from its own chart on the
// rig's node, on its default backing store (kine on embedded SQLite, /data/state.db):
//
//   - inside the virtual cluster: ConfigMaps, a Secret, a Service and a Deployment
//     whose pod the syncer really runs on the node (the host pod NAME-x-NS-x-VC);
//   - `vcsnap snapshot create VC -n NS s3://...` finds it, runs vcsnap's engine in a
//     Job beside the control plane on its data volume, and lands a verified bundle in
//     MinIO recording the vcluster's name, versions and values;
//   - objects are changed (a Service too), deleted (the Deployment too: the syncer
//     removes the host pod) and added;
//   - `vcsnap restore VC -n NS --dry-run` changes nothing; a restore whose engine
//     image is missing pauses the control plane, fails and resumes it on its current
//     state;
//   - `vcsnap restore VC -n NS s3://...` pauses the StatefulSet, restores through a
//     Job, resumes it; the vcluster is Ready again, its API (client-go) serves exactly
//     the captured objects, the previous state is in a safety bundle, and the syncer
//     runs the Deployment's pod on the host again (a new pod: the syncer deletes the
//     restored virtual pod, whose host pod is gone, and its ReplicaSet makes another).
//
// It replaces the in-place SQLite restore of the stand-in's by-name test
// (TestVClusterByName), which keeps what needs a stand-in.
func TestRealVClusterSQLiteByName(t *testing.T) {
	rig.RequireIntegration(t)
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-real", rig.ImageVCSnap, rig.ImageVClusterK8s, rig.ImageVClusterOSS)
	const name, hostNS, ns = "vc1", "team-a", "shop"
	vc := rig.InstallRealVCluster(t, r.host, r.node, name, hostNS, "")
	sw.lap("helm install to Ready")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))

	// The virtual cluster's content.
	must := mustOK(t)
	shop{configMaps: map[string]map[string]string{"cm-0": {"color": "blue", "size": "L"}, "cm-1": {"feature.x": "on"}, "cm-2": {"stale": "true"}},
		password: "s3cr3t-before"}.create(t, ctx, vcs, ns)
	firstPod := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	sw.lap("fill + synced pod running")
	before := captureObjects(t, ctx, vcs, ns)
	t.Logf("captured %d objects in virtual namespace %s; host pod %s runs on %s", len(before), ns, firstPod.Name, firstPod.Spec.NodeName)

	// The snapshot.
	store := r.podStoreURL(name + "/real") // the CLI and the engine's pod reach MinIO at one address
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, "--image", rig.VCSnapImageRef}
	var created snapshot.CreateResult
	r.cli.mustJSON(t, &created, append(append([]string{"snapshot", "create", name}, kube...), store)...)
	sw.lap("snapshot by name")
	var verified snapshot.VerifyResult
	r.cli.mustJSON(t, &verified, "snapshot", "verify", store)
	src := verified.Manifest.Source
	if verified.Manifest.Keys != created.Manifest.Keys || verified.Manifest.Keys < 50 || src.Datastore != "kine-sqlite" ||
		src.VClusterName != name || src.VClusterNamespace != hostNS || src.KubernetesVersion != rig.VClusterK8sTag ||
		src.VClusterVersion != rig.VClusterOSSTag || src.HostServiceCIDR != r.host.ServiceCIDR {
		t.Fatalf("bundle manifest: %d keys (create said %d), source %+v; want the kine-sqlite of %s/%s, Kubernetes %s, vcluster %s, host range %s",
			verified.Manifest.Keys, created.Manifest.Keys, src, hostNS, name, rig.VClusterK8sTag, rig.VClusterOSSTag, r.host.ServiceCIDR)
	}
	t.Logf("bundle: %d keys, revision %d, source %+v", verified.Manifest.Keys, verified.Manifest.Revision, src)
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the snapshot")

	// Change, delete, add.
	mutateShop(t, ctx, vcs, hostCS, name, hostNS, ns, true)
	mutated := captureObjects(t, ctx, vcs, ns)
	if diff := diffCaptured(before, mutated); diff == "" {
		t.Fatal("the changes did not change the captured objects")
	}
	sw.lap("change, delete, add")
	running := func(when string) {
		t.Helper()
		sts, err := hostCS.AppsV1().StatefulSets(hostNS).Get(ctx, vc.StatefulSet, metav1.GetOptions{})
		must(sts, err)
		if _, paused := sts.Annotations[vcluster.PausedReplicasAnnotation]; paused || sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 {
			t.Fatalf("%s: StatefulSet replicas %v, annotations %v; want 1, not paused", when, sts.Spec.Replicas, sts.Annotations)
		}
	}

	// A dry run changes nothing.
	res := r.cli.run(t, append(append([]string{"restore", name}, kube...), "--dry-run", store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "[dry-run] pause") || !strings.Contains(res.Stdout, "[dry-run] resume") ||
		!strings.Contains(res.Stdout, vc.PVC) {
		t.Fatalf("restore dry run: %s", res)
	}
	t.Logf("restore plan:\n%s", res.Stdout)
	running("after the restore dry run")
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the restore dry run")
	if diff := diffCaptured(mutated, captureObjects(t, ctx, vcs, ns)); diff != "" {
		t.Fatalf("the restore dry run changed the virtual cluster:\n%s", diff)
	}

	// A restore whose engine cannot start pauses the real control plane, fails, and
	// resumes it on its current state.
	res = r.cli.run(t, append(append([]string{"restore", name}, kube...), "--image", "vcsnap:missing", "--image-pull-policy", "Never", store)...)
	if res.Code == 0 || !strings.Contains(res.Stderr, "ErrImageNeverPull") || !strings.Contains(res.Stderr, "runs again on its previous state") {
		t.Fatalf("restore with a missing engine image: %s; want a failure that resumed the virtual cluster", res)
	}
	running("after the failed restore")
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the failed restore")
	vc.WaitReady(t, 3*time.Minute)
	vcs = kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	if diff := diffCaptured(mutated, captureObjects(t, ctx, vcs, ns)); diff != "" {
		t.Fatalf("the failed restore changed the virtual cluster:\n%s", diff)
	}
	sw.lap("dry run + failed restore")

	// The restore.
	var restored struct {
		Restore *restore.Result `json:"restore"`
	}
	res = r.cli.mustJSON(t, &restored, append(append([]string{"restore", name}, kube...), store)...)
	sw.lap("restore by name")
	if !strings.Contains(res.Stderr, "engine: ") || !strings.Contains(res.Stderr, "saved the target's current keys") {
		t.Fatalf("the engine's log did not come back to the CLI:\n%s", res)
	}
	rr := restored.Restore
	if rr == nil || rr.Revision <= rr.PreviousRevision || rr.SafetyBackup == "" {
		t.Fatalf("restore result %+v: want the revision moved forward and a safety backup", rr)
	}
	var safety snapshot.VerifyResult
	r.cli.mustJSON(t, &safety, "snapshot", "verify", rr.SafetyBackup)
	if safety.Manifest.Keys < 50 || safety.Manifest.Source.Datastore != "kine-sqlite" {
		t.Errorf("the safety backup holds %d keys of a %q datastore; want the replaced state", safety.Manifest.Keys, safety.Manifest.Source.Datastore)
	}
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the restore")
	running("after the restore")
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

	// vcsnap killed while its engine Job runs leaves the real vcluster paused; the
	// documented `vcsnap resume` waits for the Job and brings it back on the bundle's state.
	killedRestoreResumes(t, r, hostNS, name, vc.StatefulSet, hostCS, kube, store)
	running("after the killed restore and resume")
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after resume")
	vc.WaitReady(t, 3*time.Minute)
	if diff := diffCaptured(before, captureObjects(t, ctx, kubernetes.NewForConfigOrDie(vc.RESTConfig(t)), ns)); diff != "" {
		t.Fatalf("after the killed restore and resume the vcluster serves other objects than the snapshot's:\n%s", diff)
	}
	sw.lap("killed restore + resume")
	t.Logf("timings: real vcluster Ready %.1fs after helm install; whole test %s", vc.ReadyAfter.Seconds(), sw.summary())
}

// captureObjects reads the virtual namespace's ConfigMaps, Secrets, Services and
// Deployments and the namespace itself, as JSON without what a restore or the
// controllers legitimately change (resourceVersion, managedFields, the Deployment's
// status, and the ClusterIP fields the syncer copies from the host Service).
func captureObjects(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns string) map[string]string {
	t.Helper()
	out := map[string]string{}
	// Callers clear the metadata before they build v (it may hold a copy).
	clean := func(m *metav1.ObjectMeta) { m.ResourceVersion, m.ManagedFields = "", nil }
	put := func(kind string, m *metav1.ObjectMeta, v any) {
		clean(m)
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		out[kind+"/"+m.Name] = string(b)
	}
	n, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clean(&n.ObjectMeta)
	put("Namespace", &n.ObjectMeta, n.ObjectMeta)
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range cms.Items {
		c := &cms.Items[i]
		put("ConfigMap", &c.ObjectMeta, c)
	}
	secs, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range secs.Items {
		s := &secs.Items[i]
		put("Secret", &s.ObjectMeta, s)
	}
	svcs, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		clean(&s.ObjectMeta)
		put("Service", &s.ObjectMeta, struct {
			Meta  metav1.ObjectMeta
			Ports []corev1.ServicePort
			Sel   map[string]string
		}{s.ObjectMeta, s.Spec.Ports, s.Spec.Selector})
	}
	deps, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range deps.Items {
		d := &deps.Items[i]
		d.Status = appsv1.DeploymentStatus{}
		clean(&d.ObjectMeta)
		put("Deployment", &d.ObjectMeta, struct {
			Meta metav1.ObjectMeta
			Spec appsv1.DeploymentSpec
		}{d.ObjectMeta, d.Spec})
	}
	return out
}

func diffCaptured(a, b map[string]string) string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var d []string
	for _, k := range ks {
		va, oka := a[k]
		vb, okb := b[k]
		switch {
		case !oka:
			d = append(d, "only after: "+k)
		case !okb:
			d = append(d, "only before: "+k)
		case va != vb:
			d = append(d, fmt.Sprintf("differs: %s\n--- before\n%s\n--- after\n%s", k, va, vb))
		}
	}
	return strings.Join(d, "\n")
}

// waitSyncedPodRunning waits until a virtual pod matching sel in vNS runs and the
// syncer's host pod for it (annotation vcluster.loft.sh/object-name) runs on the node.
func waitSyncedPodRunning(t *testing.T, ctx context.Context, vcs, hostCS kubernetes.Interface, vcName, hostNS, vNS, sel, _ string) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var state string
	for time.Now().Before(deadline) {
		vpods, err := vcs.CoreV1().Pods(vNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			state = "virtual pods: " + err.Error()
		} else {
			state = fmt.Sprintf("%d virtual pods", len(vpods.Items))
			for _, vp := range vpods.Items {
				state += fmt.Sprintf("; %s %s", vp.Name, vp.Status.Phase)
				hp, err := hostCS.CoreV1().Pods(hostNS).Get(ctx, vp.Name+"-x-"+vNS+"-x-"+vcName, metav1.GetOptions{})
				if err != nil {
					state += " (host: " + err.Error() + ")"
					continue
				}
				state += fmt.Sprintf(" (host %s %s)", hp.Name, hp.Status.Phase)
				if hp.Status.Phase == corev1.PodRunning && vp.Status.Phase == corev1.PodRunning &&
					hp.Annotations["vcluster.loft.sh/object-name"] == vp.Name && hp.Labels["vcluster.loft.sh/managed-by"] == vcName {
					return hp
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("no synced pod %s in %s running within 3m: %s", sel, vNS, state)
	return nil
}

// waitHostPodsGone waits until the syncer has removed the host pods of vNS.
func waitHostPodsGone(t *testing.T, ctx context.Context, hostCS kubernetes.Interface, vcName, hostNS, vNS string) {
	t.Helper()
	sel := labels.Set{"vcluster.loft.sh/managed-by": vcName, "vcluster.loft.sh/namespace": vNS}.String()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := hostCS.CoreV1().Pods(hostNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(pods.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host pods of virtual namespace %s still there after 2m: %v %v", vNS, pods, err)
		}
		time.Sleep(time.Second)
	}
}

// noEngineLeft: no Job, Secret or pod of vcsnap's engine remains in the host namespace.
func noEngineLeft(t *testing.T, ctx context.Context, hostCS kubernetes.Interface, hostNS, vcName, when string) {
	t.Helper()
	sel := labels.Set{vcluster.LabelVCluster: vcName}.String()
	jobs, err := hostCS.BatchV1().Jobs(hostNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := hostCS.CoreV1().Secrets(hostNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := hostCS.CoreV1().Pods(hostNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(jobs.Items) + len(secrets.Items) + len(pods.Items); n != 0 {
		t.Fatalf("%s: %d Jobs, %d Secrets, %d pods of vcsnap's engine left in %s", when, len(jobs.Items), len(secrets.Items), len(pods.Items), hostNS)
	}
}
