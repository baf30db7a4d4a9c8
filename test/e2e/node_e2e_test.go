package e2e

import (
	"context"
	"net/url"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

// TestNodeSnapshotJob is vcsnap as users run it on a cluster: a
// vcluster-shaped virtual cluster whose control plane is a pod on a real node
// (kine on SQLite + kube-apiserver, and embedded etcd + kube-apiserver), and a
// Job running vcsnap's own image that mounts the control plane's PVC and
// snapshots the live datastore where it lives (kine's socket
// unix:///data/kine.sock; the embedded etcd at the pod IP with the
// certificates from /data/pki) into MinIO, reached from the pod through the
// node's veth. The bundle then verifies with the CLI from the test, and
// restored by the CLI into a fresh etcd it serves exactly the objects the
// virtual cluster served (rig.DumpAll; see TestDatastoreRoundTrip for what
// the comparison ignores and why).
func TestNodeSnapshotJob(t *testing.T) {
	rig.RequireIntegration(t)
	suite := newStopwatch(t)
	r := startNodeRig(t, suite, "vcsnap-node")
	host, node, m, bucket, cli, minioForPods := r.host, r.node, r.minio, r.bucket, r.cli, r.minioForPods

	var tm timings
	for i, backing := range []string{rig.VClusterSQLite, rig.VClusterEtcd} {
		t.Run(backing, func(t *testing.T) {
			sw := newStopwatch(t)
			snapshotJob(t, host, node, m, bucket, cli, minioForPods, backing, int64(4242+i), sw)
			tm.add("%-6s %s", backing, sw.summary())
		})
	}
	tm.add("node started in %.1fs (kubelet to Ready %.1fs); whole test %s",
		node.StartupTime.Seconds(), node.KubeletReady.Seconds(), suite.summary())
	tm.log(t)
}

func snapshotJob(t *testing.T, host *rig.Host, node *rig.Node, m *rig.MinIO, bucket s3Bucket, cli *vcsnapCLI,
	minioForPods, backing string, seed int64, sw *stopwatch) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	vc := rig.StartVClusterOnNode(t, host, node, rig.VClusterOptions{Name: "vc-" + backing, Backing: backing})
	sw.lap("start virtual cluster pod")
	vcfg := vc.RESTConfig(t)
	fill := rig.FillRealistic(t, vcfg, seed)
	before := rig.DumpAll(t, vcfg)
	sw.lap("fill + dump")
	t.Logf("virtual cluster %s/%s: %d objects, %d fill requests", vc.Namespace, vc.Name, len(before), fill.Requests)

	cs := kubernetes.NewForConfigOrDie(host.RESTConfig())
	if _, err := cs.CoreV1().Secrets(vc.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "vcsnap-s3"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The snapshot Job, next to the control plane, on its volume.
	key := vc.Name + "/from-job"
	q := url.Values{}
	q.Set("endpoint", "http://"+minioForPods)
	q.Set("force-path-style", "true")
	q.Set("region", m.Region)
	podStore := "s3://" + bucket.bucket + "/" + key + "?" + q.Encode()
	job := rig.VCSnapJob(rig.VCSnapJobOptions{
		Name: "vcsnap-snapshot", Namespace: vc.Namespace, PVC: vc.PVC, ReadOnly: true,
		NodeName: vc.NodeName(t), EnvSecret: "vcsnap-s3",
		Env: []corev1.EnvVar{{Name: "AWS_EC2_METADATA_DISABLED", Value: "true"}},
		Args: []string{"-o", "json", "snapshot", "create", "--datastore", vc.DatastoreURL(t),
			"--vcluster-name", vc.Name, "--vcluster-namespace", vc.Namespace, "--kubernetes-version", "v1.32.2", podStore},
	})
	res := rig.RunJob(t, host.RESTConfig(), job, 5*time.Minute)
	sw.lap("snapshot Job")
	t.Logf("Job pod %s: succeeded=%t in %v; log:\n%s", res.Pod, res.Succeeded, res.Duration.Round(time.Millisecond), res.Logs)
	if !res.Succeeded {
		t.Fatalf("the snapshot Job failed")
	}

	// The bundle verifies with the CLI from the test.
	store := bucket.url(key)
	var verified snapshot.VerifyResult
	cli.mustJSON(t, &verified, "snapshot", "verify", store)
	mf := verified.Manifest
	t.Logf("bundle %s: %d keys, %d leases, revision %d, datastore %s", key, mf.Keys, mf.Leases, mf.Revision, mf.Source.Datastore)
	wantKind := map[string]string{rig.VClusterSQLite: "kine", rig.VClusterEtcd: "etcd"}[backing]
	if mf.Keys < 100 || mf.Source.VClusterName != vc.Name || mf.Source.VClusterNamespace != vc.Namespace || mf.Source.Datastore != wantKind {
		t.Fatalf("manifest: %d keys, source %+v; want the virtual cluster's %s", mf.Keys, mf.Source, wantKind)
	}
	sw.lap("verify")

	// Its content: restored into a fresh etcd, an apiserver with the
	// virtual cluster's PKI serves the same objects.
	etcd := rig.StartEtcd(t)
	eu, err := url.Parse(etcd.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if r := cli.run(t, "restore", "--datastore", "etcd://"+eu.Host, store); r.Code != 0 {
		t.Fatalf("%s", r)
	}
	api := rig.StartAPIServer(t, rig.APIServerOptions{EtcdServers: []string{etcd.Endpoint}, ServiceCIDR: vc.ServiceCIDR, PKI: vc.PKI})
	after := rig.DumpAll(t, api.RESTConfig())
	if diff := rig.DiffDumps(before, after); diff != "" {
		t.Fatalf("restored objects differ from the virtual cluster's:\n%s", diff)
	}
	sw.lap("restore into etcd + compare")
}
