package e2e

import (
	"bytes"
	"context"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/vcluster"
)

// TestVClusterByName is the by-name workflow on the rig's real node, as a user runs it
// from a workstation against a host cluster, on the stand-in vcluster (test/rig's
// vcluster-shaped control plane) on embedded etcd, which the real vcluster v0.30 keeps
// for Pro, filled with objects. Everything on embedded SQLite runs against the real
// vcluster instead: the in-place restore (TestRealVClusterSQLiteByName), the restore
// onto another name and host namespace (TestRealVClusterRestoreOntoAnotherName) and
// the volumes (TestRealVClusterVolumesByName).
//
//   - `vcsnap snapshot create NAME -n NS --dry-run` prints its plan and changes nothing;
//   - `vcsnap snapshot create NAME -n NS s3://...` finds the cluster, runs vcsnap's own
//     image in a Job on the control plane's node mounting its data volume, and lands a
//     bundle in MinIO that verifies and records the values, versions and host facts;
//   - a second snapshot onto the same bundle exits 5, the engine's own code; the
//     virtual cluster's objects are changed, created and deleted;
//     `vcsnap restore NAME -n NS --dry-run` changes nothing; the restore's CLI is
//     killed while its Job runs, and the documented `vcsnap resume NAME -n NS` lets
//     the Job finish and brings the cluster back, serving exactly the snapshot's
//     objects (rig.DumpAll).
//
// No temporary Job or Secret is left behind. MinIO is reached at the node's veth
// address by the test's CLI and the Job's pod alike, so both use one store URL.
func TestVClusterByName(t *testing.T) {
	rig.RequireIntegration(t)
	suite := newStopwatch(t)
	r := startNodeRig(t, suite, "vcsnap-byname")
	var tm timings
	t.Run(rig.VClusterEtcd, func(t *testing.T) {
		sw := newStopwatch(t)
		byName(t, r, rig.VClusterEtcd, 7101, sw)
		tm.add("%-6s %s", rig.VClusterEtcd, sw.summary())
	})
	tm.add("node started in %.1fs (kubelet to Ready %.1fs); whole test %s",
		r.node.StartupTime.Seconds(), r.node.KubeletReady.Seconds(), suite.summary())
	tm.log(t)
}

func byName(t *testing.T, r *nodeRig, backing string, seed int64, sw *stopwatch) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vc := rig.StartVClusterOnNode(t, r.host, r.node, rig.VClusterOptions{Name: "byname-" + backing, Backing: backing})
	sw.lap("start virtual cluster")
	fill := rig.FillRealistic(t, vc.RESTConfig(t), seed)
	before := rig.DumpAll(t, vc.RESTConfig(t))
	sw.lap("fill + dump")
	t.Logf("virtual cluster %s/%s: %d objects", vc.Namespace, vc.Name, len(before))

	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	q := url.Values{}
	q.Set("endpoint", "http://"+r.minioForPods)
	q.Set("force-path-style", "true")
	q.Set("region", r.minio.Region)
	key := vc.Name + "/by-name"
	store := "s3://" + r.bucket.bucket + "/" + key + "?" + q.Encode()
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", vc.Namespace, "--image", rig.VCSnapImageRef}
	cli := r.cli
	noTemporaries := func(when string) {
		t.Helper()
		sel := labels.Set{vcluster.LabelVCluster: vc.Name}.String()
		jobs, err := hostCS.BatchV1().Jobs(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		secrets, err := hostCS.CoreV1().Secrets(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		pods, err := hostCS.CoreV1().Pods(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(jobs.Items) + len(secrets.Items) + len(pods.Items); n != 0 {
			t.Fatalf("%s: %d Jobs, %d Secrets, %d pods of vcsnap's engine left in %s", when, len(jobs.Items), len(secrets.Items), len(pods.Items), vc.Namespace)
		}
	}
	running := func(when string) {
		t.Helper()
		sts, err := hostCS.AppsV1().StatefulSets(vc.Namespace).Get(ctx, vc.StatefulSet, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := sts.Annotations[vcluster.PausedReplicasAnnotation]; ok || sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 {
			t.Fatalf("%s: StatefulSet replicas %v, annotations %v; want 1 replica, not paused", when, sts.Spec.Replicas, sts.Annotations)
		}
	}

	// Dry run: a plan, and nothing created.
	res := cli.run(t, append(append([]string{"snapshot", "create", vc.Name}, kube...), "--dry-run", store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "[dry-run] create Job") || !strings.Contains(res.Stdout, vc.PVC) {
		t.Fatalf("dry run: %s", res)
	}
	if strings.Contains(res.Stdout+res.Stderr, r.minio.SecretKey) {
		t.Fatalf("the dry run printed the store's secret key:\n%s", res)
	}
	if d := cli.run(t, "snapshot", "describe", r.bucket.url(key)); d.Code != 4 {
		t.Fatalf("after a dry run, describe: %s; want exit 4 (no bundle)", d)
	}
	noTemporaries("after the snapshot dry run")
	sw.lap("snapshot dry run")

	// The snapshot, through the engine Job.
	var created snapshot.CreateResult
	cli.mustJSON(t, &created, append(append([]string{"snapshot", "create", vc.Name}, kube...), store)...)
	sw.lap("snapshot by name")
	noTemporaries("after the snapshot")
	var verified snapshot.VerifyResult
	cli.mustJSON(t, &verified, "snapshot", "verify", store)
	src := verified.Manifest.Source
	wantKind := map[string]string{rig.VClusterSQLite: "kine-sqlite", rig.VClusterEtcd: "etcd"}[backing]
	if verified.Manifest.Keys != created.Manifest.Keys || verified.Manifest.Keys < 100 || src.Datastore != wantKind ||
		src.VClusterName != vc.Name || src.VClusterNamespace != vc.Namespace || src.KubernetesVersion != "v1.32.2" ||
		src.ServiceCIDR != vc.ServiceCIDR || src.HostServiceCIDR != r.host.ServiceCIDR {
		t.Fatalf("bundle manifest: %d keys (create said %d), source %+v; want the %s of %s/%s with versions and host facts",
			verified.Manifest.Keys, created.Manifest.Keys, src, wantKind, vc.Namespace, vc.Name)
	}
	t.Logf("bundle: %d keys, revision %d, source %+v", verified.Manifest.Keys, verified.Manifest.Revision, src)
	sw.lap("verify")
	if backing == rig.VClusterEtcd {
		// The engine's own exit code comes back: an existing bundle is refused (5).
		res := cli.run(t, append(append([]string{"snapshot", "create", vc.Name}, kube...), store)...)
		if res.Code != 5 || !strings.Contains(res.Stderr, "already exists") {
			t.Fatalf("a second snapshot onto the same bundle: %s; want exit 5 from the engine", res)
		}
		noTemporaries("after the refused snapshot")
		sw.lap("refused overwrite")
	}

	// Change the virtual cluster: update, delete, create.
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	ns := fill.Namespaces[0]
	cms, err := vcs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(cms.Items) < 2 {
		t.Fatalf("configmaps in %s: %d, %v", ns, len(cms.Items), err)
	}
	changed := cms.Items[0]
	changed.Data = map[string]string{"changed": "after the snapshot"}
	if _, err := vcs.CoreV1().ConfigMaps(ns).Update(ctx, &changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := vcs.CoreV1().ConfigMaps(ns).Delete(ctx, cms.Items[1].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := vcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "after-snapshot"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mutated := rig.DumpAll(t, vc.RESTConfig(t))
	if rig.DiffDumps(before, mutated) == "" {
		t.Fatal("the changes did not change the dump")
	}

	// Restore dry run: nothing changes.
	res = cli.run(t, append(append([]string{"restore", vc.Name}, kube...), "--dry-run", store)...)
	if res.Code != 0 || !strings.Contains(res.Stdout, "[dry-run] pause") || !strings.Contains(res.Stdout, "[dry-run] resume") {
		t.Fatalf("restore dry run: %s", res)
	}
	running("after the restore dry run")
	noTemporaries("after the restore dry run")
	if diff := rig.DiffDumps(mutated, rig.DumpAll(t, vc.RESTConfig(t))); diff != "" {
		t.Fatalf("the restore dry run changed the virtual cluster:\n%s", diff)
	}
	sw.lap("change + restore dry run")

	// On embedded etcd the CLI is killed while its engine Job runs, and
	// `vcsnap resume` lets the Job finish and brings the virtual cluster back.
	killedRestoreResumes(t, r, vc.Namespace, vc.Name, vc.StatefulSet, hostCS, kube, store)
	sw.lap("killed restore + resume")
	running("after the restore")
	noTemporaries("after the restore")
	vc.WaitReady(t, time.Minute) // the pod (and its IP) is new
	after := rig.DumpAll(t, vc.RESTConfig(t))
	if diff := rig.DiffDumps(before, after); diff != "" {
		t.Fatalf("the restored virtual cluster serves other objects than the snapshot's:\n%s", diff)
	}
	sw.lap("compare")
}

// killedRestoreResumes kills `vcsnap restore NAME` once its engine Job exists (the
// virtual cluster is paused then), and runs the documented `vcsnap resume NAME -n NS`.
func killedRestoreResumes(t *testing.T, r *nodeRig, namespace, name, statefulSet string, hostCS kubernetes.Interface, kube []string, store string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vcsnapBin, append(append([]string{"restore", name}, kube...), store)...)
	cmd.Env = r.cli.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sel := labels.Set{vcluster.LabelVCluster: name, vcluster.LabelOperation: "restore"}.String()
	var job string
	for job == "" {
		jobs, err := hostCS.BatchV1().Jobs(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs.Items) > 0 {
			job = jobs.Items[0].Name
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no restore Job appeared; vcsnap said:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling for the Job, not timing
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	sts, err := hostCS.AppsV1().StatefulSets(namespace).Get(ctx, statefulSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sts.Annotations[vcluster.PausedReplicasAnnotation] != "1" || *sts.Spec.Replicas != 0 {
		t.Fatalf("killed while Job %s ran: replicas %d, annotations %v; want paused with 1 recorded", job, *sts.Spec.Replicas, sts.Annotations)
	}
	t.Logf("killed vcsnap restore while its Job %s existed; the virtual cluster is paused", job)
	res := r.cli.run(t, "resume", name, "--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", namespace)
	if res.Code != 0 || !strings.Contains(res.Stderr, "engine Job had finished its work") {
		t.Fatalf("resume: %s; want the orphaned Job waited for and resumed", res)
	}
}
