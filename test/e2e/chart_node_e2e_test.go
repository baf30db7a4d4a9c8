package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/report"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

// TestChartCronJobOnNode installs the Helm chart as users do (helm template,
// kubectl apply) next to a vcluster-shaped virtual cluster on SQLite/kine
// running on a real node, and lets the host's CronJob controller schedule a
// backup: the Job's `snapshot` init container snapshots kine through its
// socket on the mounted PVC into MinIO (reached through the node's veth) and
// prints its one-line JSON summary, then the `prune` container applies the
// retention rules. The bundle is then listed and verified with the CLI.
//
// The pods cannot reach the host apiserver's ClusterIP (the node runs no
// kube-proxy), so the in-cluster reports (Event, status ConfigMap) are off;
// the one-line summary in the log is what the test checks.
func TestChartCronJobOnNode(t *testing.T) {
	rig.RequireIntegration(t)
	helm, kubectl := rig.Tool(t, "helm"), rig.Tool(t, "kubectl")
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-chart")
	host, node, m, bucket, cli, minioForPods := r.host, r.node, r.minio, r.bucket, r.cli, r.minioForPods

	vc := rig.StartVClusterOnNode(t, host, node, rig.VClusterOptions{Name: "vc-chart", Backing: rig.VClusterSQLite})
	sw.lap("start virtual cluster pod")

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(host.RESTConfig())
	if _, err := cs.CoreV1().Secrets(vc.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "vcsnap-s3"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The chart, rendered for the virtual cluster's namespace.
	repo, tag, ok := strings.Cut(rig.VCSnapImageRef, ":")
	if !ok {
		t.Fatalf("image reference %q has no tag", rig.VCSnapImageRef)
	}
	const prefix = "chart/"
	values := fmt.Sprintf(`image:
  repository: %q
  tag: %q
  pullPolicy: Never
virtualClusters:
  - name: %q
    datastore: unix:///data/kine.sock
    dataPVC: %q
    store: %q
    watch: {enabled: true, deltaEvery: 1s}
schedule: "* * * * *"
s3:
  endpoint: %q
  forcePathStyle: true
  region: %q
  credentialsSecret: vcsnap-s3
retention:
  keepLast: 2
# The pods cannot reach the apiserver's ClusterIP (no kube-proxy on the rig's node).
report:
  events: false
  statusConfigMap: false
# vcluster runs as root: kine's socket is root's, mode 0600. fsGroup is dropped so
# the kubelet leaves the virtual cluster's volume as it is.
podSecurityContext:
  runAsNonRoot: false
  runAsUser: 0
  runAsGroup: 0
  fsGroup: null
`, repo, tag, vc.Name, vc.PVC, "s3://"+bucket.bucket+"/"+prefix, "http://"+minioForPods, m.Region)
	dir := t.TempDir()
	valuesFile := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(valuesFile, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(helm, "template", "backups", rig.ChartDir(t), "--namespace", vc.Namespace, "-f", valuesFile)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	for _, want := range []string{"image: " + rig.VCSnapImageRef, "imagePullPolicy: Never", "runAsUser: 0", "--keep-last=2",
		"claimName: " + vc.PVC, "- --summary", "- watch", "name: prune-pitr"} {
		if !strings.Contains(out, want) {
			t.Fatalf("rendering lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"--report-event", "--report-configmap", m.SecretKey, "fsGroup"} {
		if strings.Contains(out, unwanted) {
			t.Fatalf("rendering contains %q:\n%s", unwanted, out)
		}
	}
	manifests := filepath.Join(dir, "chart.yaml")
	if err := os.WriteFile(manifests, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	sw.lap("helm template")

	// Apply; from here the host's CronJob controller is in charge.
	applied := time.Now()
	kc := "--kubeconfig=" + host.APIServer.KubeconfigPath
	if out, err := runTool(kubectl, kc, "apply", "--server-side", "-n", vc.Namespace, "-f", manifests); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	cronJob := "backups-vcsnap-" + vc.Name
	// Before the node drains: no more Jobs.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		bg := metav1.DeletePropagationBackground
		if err := cs.BatchV1().CronJobs(vc.Namespace).Delete(ctx, cronJob, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			t.Logf("delete CronJob %s: %v", cronJob, err)
		}
	})
	if _, err := cs.BatchV1().CronJobs(vc.Namespace).Get(ctx, cronJob, metav1.GetOptions{}); err != nil {
		t.Fatalf("CronJob %s after apply: %v", cronJob, err)
	}
	t.Logf("applied the chart at %s; CronJob %s/%s", applied.UTC().Format(time.RFC3339), vc.Namespace, cronJob)

	// Wait for the first Job the CronJob creates to finish.
	var job *batchv1.Job
	var failed bool
	rig.WaitReady(t, 5*time.Minute, "first Job of CronJob "+cronJob+" finished", func(ctx context.Context) error {
		jobs, err := cs.BatchV1().Jobs(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "vcsnap.io/virtual-cluster=" + vc.Name})
		if err != nil {
			return err
		}
		var states []string
		for i := range jobs.Items {
			j := &jobs.Items[i]
			if !ownedBy(j, "CronJob", cronJob) {
				continue
			}
			for _, c := range j.Status.Conditions {
				if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
					job, failed = j, c.Type == batchv1.JobFailed
					return nil
				}
			}
			states = append(states, fmt.Sprintf("%s: active %d, succeeded %d, failed %d", j.Name, j.Status.Active, j.Status.Succeeded, j.Status.Failed))
		}
		if len(states) == 0 {
			return fmt.Errorf("no Job yet")
		}
		return fmt.Errorf("%s", strings.Join(states, "; "))
	}, host.ControllerManager, node.Kubelet, node.Containerd, node.Scheduler)
	firstJob := time.Since(applied)
	sw.lap("first scheduled Job")

	// Its pod: both containers ran and exited 0; the snapshot's summary is in its log.
	pods, err := cs.CoreV1().Pods(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/controller-uid=" + string(job.UID)})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) == 0 {
		t.Fatalf("Job %s has no pod", job.Name)
	}
	logs := func(p *corev1.Pod, container string) string {
		b, err := cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		if err != nil {
			return fmt.Sprintf("(logs of %s: %v)", container, err)
		}
		return string(b)
	}
	pod := &pods.Items[len(pods.Items)-1]
	snapLog, pruneLog := logs(pod, "snapshot"), logs(pod, "prune")
	t.Logf("Job %s pod %s (node %s); snapshot log:\n%s\nprune log:\n%s", job.Name, pod.Name, pod.Spec.NodeName, snapLog, pruneLog)
	if failed {
		t.Fatalf("the CronJob's first Job %s failed; pod status: %+v", job.Name, pod.Status)
	}
	// snapshot (init), then prune and prune-pitr (the watcher's chains).
	for i, st := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		if want := i + 1; len(st) != want {
			t.Fatalf("container statuses %+v: want %d", st, want)
		}
		for _, c := range st {
			if c.State.Terminated == nil || c.State.Terminated.ExitCode != 0 {
				t.Fatalf("container %s: %+v, want terminated with exit code 0", c.Name, c.State)
			}
		}
	}
	var summary *report.Summary
	for _, line := range strings.Split(snapLog, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") || !strings.Contains(line, `"outcome"`) {
			continue
		}
		var s report.Summary
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("summary line %q: %v", line, err)
		}
		summary = &s
	}
	if summary == nil || !strings.Contains(snapLog, `"outcome":"success"`) || summary.Outcome != "success" ||
		summary.Operation != "snapshot" || summary.VirtualCluster != vc.Name || summary.Keys == 0 {
		t.Fatalf("snapshot log has no successful one-line summary for %s: %+v", vc.Name, summary)
	}
	wantBundle := "s3://" + bucket.bucket + "/" + prefix + vc.Name + "-"
	if !strings.HasPrefix(summary.Bundle, wantBundle) {
		t.Fatalf("summary bundle %q, want %s<time>", summary.Bundle, wantBundle)
	}

	// The CLI lists the bundle under the prefix and verifies it.
	var entries []*snapshot.Entry
	cli.mustJSON(t, &entries, "snapshot", "list", bucket.url(prefix))
	var entry *snapshot.Entry
	for _, e := range entries {
		t.Logf("listed %s: %d bytes, problem %q", e.Name, e.Size, e.Problem)
		// The pod reaches MinIO at another address than this test: compare without options.
		summaryObject, _, _ := strings.Cut(summary.Bundle, "?")
		listedObject, _, _ := strings.Cut(e.URL, "?")
		if summaryObject == listedObject && len(listedObject) > len(wantBundle) && e.Manifest != nil {
			entry = e
		}
	}
	if entry == nil {
		t.Fatalf("snapshot list of %s does not show the bundle %s: %d entries", prefix, summary.Bundle, len(entries))
	}
	var verified snapshot.VerifyResult
	cli.mustJSON(t, &verified, "snapshot", "verify", bucket.url(entry.Name))
	mf := verified.Manifest
	if mf == nil || mf.Keys != summary.Keys || mf.Source.Datastore != "kine" || mf.Source.VClusterName != vc.Name || mf.Source.VClusterNamespace != vc.Namespace {
		t.Fatalf("verified manifest %+v; want the summary's %d keys from kine of %s/%s", mf, summary.Keys, vc.Namespace, vc.Name)
	}
	sw.lap("list + verify")
	created := job.CreationTimestamp.Sub(applied)
	ran := "?"
	if job.Status.CompletionTime != nil {
		ran = fmt.Sprintf("%.1fs", job.Status.CompletionTime.Sub(job.CreationTimestamp.Time).Seconds())
	}
	t.Logf("apply to first successful Job: %.1fs (Job created %.1fs after apply at the schedule's minute, ran %s, timestamps in whole seconds); "+
		"bundle %s: %d keys, %d bytes, revision %d; whole test %s",
		firstJob.Seconds(), created.Seconds(), ran, entry.Name, mf.Keys, entry.Size, mf.Revision, sw.summary())

	checkChartWatcher(t, ctx, cli, bucket, prefix+"pitr/"+vc.Name+"/", vc)
	sw.lap("watcher: a change reaches a delta and a point-in-time restore")
}

// checkChartWatcher: the chart's watch Deployment captures a change made in the virtual
// cluster into a delta bundle, and a point-in-time restore at that change's revision
// brings it back (read through kine from the restored SQLite file).
func checkChartWatcher(t *testing.T, ctx context.Context, cli *vcsnapCLI, bucket s3Bucket, pitr string, vc *rig.VClusterOnNode) {
	t.Helper()
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	probe, err := vcs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "pitr-probe"}, Data: map[string]string{"at": time.Now().UTC().Format(time.RFC3339Nano)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rev := rvInt(t, probe.ResourceVersion)
	type chainList struct {
		Chains []*snapshot.Chain `json:"chains"`
	}
	rig.WaitReady(t, 2*time.Minute, fmt.Sprintf("a chain under %s reaching revision %d", pitr, rev), func(ctx context.Context) error {
		var cl chainList
		if r := cli.run(t, "snapshot", "list", "--chains", "-o", "json", bucket.url(pitr)); r.Code != 0 {
			return fmt.Errorf("list: %s", r)
		} else if err := json.Unmarshal([]byte(r.Stdout), &cl); err != nil {
			return fmt.Errorf("list output: %v", err)
		}
		for _, c := range cl.Chains {
			if len(c.Deltas) > 0 && c.ToRevision >= rev && c.Gap == nil {
				return nil
			}
		}
		return fmt.Errorf("%d chains, none with a delta reaching revision %d", len(cl.Chains), rev)
	})
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	cli.mustJSON(t, &map[string]any{}, "restore", "--to-revision", fmt.Sprint(rev), "--datastore", "sqlite://"+db, bucket.url(pitr))
	k := rig.StartKine(t, rig.SQLiteDSN(db))
	defer k.Stop()
	c := rig.EtcdClient(t, k.Endpoint, nil)
	defer c.Close()
	got, err := c.Get(ctx, "/registry/configmaps/default/pitr-probe")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != 1 || !strings.Contains(string(got.Kvs[0].Value), probe.Data["at"]) {
		t.Fatalf("the point-in-time restore at revision %d lacks the probe ConfigMap written at it: %d keys", rev, len(got.Kvs))
	}
}

func ownedBy(j *batchv1.Job, kind, name string) bool {
	for _, o := range j.OwnerReferences {
		if o.Kind == kind && o.Name == name {
			return true
		}
	}
	return false
}

// runTool runs a tool from the tools cache and returns its combined output.
func runTool(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(b), err
}
