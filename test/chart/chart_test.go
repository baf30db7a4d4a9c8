// Package chart tests the Helm chart: lint and render across value sets, apply the
// rendered manifests to a real kube-apiserver, and check the ServiceAccount's RBAC.
package chart

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/report"
	"github.com/vcsnap/vcsnap/test/rig"
)

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

var valueSets = map[string][]string{
	"minimal": {"virtualClusters[0].name=vc1", "virtualClusters[0].datastore=unix:///data/kine.sock",
		"virtualClusters[0].dataPVC=data-vc1-0", "virtualClusters[0].store=s3://backups/vc1/"},
	"full": {"virtualClusters[0].name=vc1", "virtualClusters[0].datastore=sqlite:///data/state.db",
		"virtualClusters[0].dataPVC=data-vc1-0", "virtualClusters[0].store=s3://backups/vc1/",
		"virtualClusters[0].schedule=*/5 * * * *", "virtualClusters[0].retention.keepLast=3",
		"virtualClusters[0].watch.enabled=true", "virtualClusters[0].watch.deltaEvery=2s", "virtualClusters[0].watch.keepWithin=3d",
		"virtualClusters[1].name=vc2", "virtualClusters[1].datastore=etcds://vc2-etcd:2379",
		"virtualClusters[1].store=file:///backups/vc2/",
		"s3.region=eu-west-1", "s3.endpoint=http://minio:9000", "s3.forcePathStyle=true", "s3.sse=aws:kms",
		"s3.kmsKeyId=alias/backups", "s3.credentialsSecret=s3-creds",
		"encryption.passphraseSecret.name=vcsnap-pass", "encryption.identitySecret.name=vcsnap-id",
		"report.pushgateway=http://pushgateway:9091", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/x",
		"nodeSelector.kubernetes\\.io/hostname=node-1",
		"restore.enabled=true", "restore.bundle=s3://backups/vc1/vc1-20261121T000000Z", "restore.datastore=sqlite:///data/state.db",
		"restore.dataPVC=data-vc1-0", "restore.force=true"},
	"no-rbac": {"virtualClusters[0].name=vc1", "virtualClusters[0].datastore=etcd://etcd:2379",
		"virtualClusters[0].store=s3://backups/vc1/", "rbac.create=false", "serviceAccount.create=false",
		"report.events=false", "report.statusConfigMap=false"},
}

func template(t *testing.T, helm string, set []string) string {
	t.Helper()
	args := []string{"template", "backups", rig.ChartDir(t), "--namespace", "team-a"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := run(t, helm, args...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	return out
}

func TestChartLintAndTemplate(t *testing.T) {
	rig.RequireIntegration(t)
	helm := rig.Tool(t, "helm")
	for name, set := range valueSets {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", rig.ChartDir(t)}
			for _, s := range set {
				args = append(args, "--set", s)
			}
			if out, err := run(t, helm, args...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			out := template(t, helm, set)
			// Hardening that must hold in every rendering.
			for _, want := range []string{"concurrencyPolicy: Forbid", "readOnlyRootFilesystem: true", "runAsNonRoot: true",
				"allowPrivilegeEscalation: false", "type: RuntimeDefault", "- ALL"} {
				if !strings.Contains(out, want) {
					t.Errorf("rendering lacks %q", want)
				}
			}
			if strings.Contains(out, "AWS_SECRET_ACCESS_KEY:") || strings.Contains(out, "value: AKIA") {
				t.Error("a credential value is rendered into the manifests")
			}
		})
	}
	// A value outside the schema is refused.
	if out, err := run(t, helm, "template", "x", rig.ChartDir(t), "--set", "s3.secretKey=abc"); err == nil {
		t.Fatalf("schema accepted an unknown value:\n%s", out)
	}
	full := template(t, helm, valueSets["full"])
	for _, want := range []string{"s3://backups/vc1/vc1-{time}?region=eu-west-1&endpoint=http://minio:9000&force-path-style=true&sse=aws:kms&kms-key-id=alias/backups",
		"- s3://backups/vc1/vc1-?region=eu-west-1&endpoint=http://minio:9000&force-path-style=true&sse=aws:kms&kms-key-id=alias/backups",
		"--encrypt-passphrase-file=/etc/vcsnap/passphrase/passphrase", "--pushgateway=http://pushgateway:9091", "--keep-last=3",
		"schedule: \"*/5 * * * *\"", "kind: Job", "--identity-file=/etc/vcsnap/identity/identity.txt", "- --force",
		// vc1's watcher: one pod at a time, its chains under pitr/vc1/, pruned whole by the CronJob.
		"kind: Deployment", "name: backups-vcsnap-vc1-watch", "strategy: {type: Recreate}", "- watch", "--delta-every=2s", "--full-every=6h",
		"- s3://backups/vc1/pitr/vc1/?region=eu-west-1&endpoint=http://minio:9000&force-path-style=true&sse=aws:kms&kms-key-id=alias/backups",
		"name: prune-pitr", "--keep-within=3d"} {
		if !strings.Contains(full, want) {
			t.Errorf("full rendering lacks %q", want)
		}
	}
	if n := strings.Count(full, "kind: Deployment"); n != 1 {
		t.Errorf("full rendering has %d Deployments, want only vc1's watcher", n)
	}
}

// The rendered chart applies to a real kube-apiserver, and its ServiceAccount may do
// exactly what the Job needs.
func TestChartAppliesWithLeastPrivilege(t *testing.T) {
	rig.RequireIntegration(t)
	helm, kubectl := rig.Tool(t, "helm"), rig.Tool(t, "kubectl")
	etcd := rig.StartEtcd(t)
	api := rig.StartAPIServer(t, rig.APIServerOptions{EtcdServers: []string{etcd.Endpoint}})
	kc := "--kubeconfig=" + api.KubeconfigPath
	if out, err := run(t, kubectl, kc, "create", "namespace", "team-a"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	manifests := filepath.Join(t.TempDir(), "chart.yaml")
	os.WriteFile(manifests, []byte(template(t, helm, valueSets["full"])), 0o644)
	for _, extra := range [][]string{{"--dry-run=server"}, nil} {
		args := append([]string{kc, "apply", "--server-side", "-n", "team-a", "-f", manifests}, extra...)
		if out, err := run(t, kubectl, args...); err != nil {
			t.Fatalf("kubectl apply %v: %v\n%s", extra, err, out)
		}
	}
	if out, err := run(t, kubectl, kc, "get", "cronjob,job,role,rolebinding,serviceaccount", "-n", "team-a", "-o", "name"); err != nil ||
		!strings.Contains(out, "cronjob.batch/backups-vcsnap-vc1") || !strings.Contains(out, "cronjob.batch/backups-vcsnap-vc2") {
		t.Fatalf("applied objects: %v\n%s", err, out)
	}
	sa := "--as=system:serviceaccount:team-a:backups-vcsnap"
	for _, c := range []struct {
		verb, resource string
		allowed        bool
	}{
		{"create", "events", true},
		{"create", "configmaps", true},
		{"update", "configmaps/vcsnap-status-vc1", true},
		{"get", "configmaps/vcsnap-status-vc2", true},
		{"update", "configmaps/kube-root-ca.crt", false},
		{"get", "configmaps/other", false},
		{"list", "configmaps", false},
		{"delete", "configmaps/vcsnap-status-vc1", false},
		{"delete", "events", false},
		{"get", "secrets", false},
		{"list", "pods", false},
		{"create", "pods", false},
		{"get", "statefulsets.apps", false},
	} {
		// kubectl auth can-i exits 1 for "no": its answer, not its exit code, says which;
		// anything but yes or no is kubectl failing, and fails the row.
		out, _ := run(t, kubectl, kc, "auth", "can-i", c.verb, c.resource, "-n", "team-a", sa)
		answer := strings.TrimSpace(out)
		if answer != "yes" && answer != "no" {
			t.Fatalf("kubectl auth can-i %s %s failed: %q", c.verb, c.resource, answer)
		}
		if got := answer == "yes"; got != c.allowed {
			t.Errorf("can-i %s %s = %q, want allowed=%v", c.verb, c.resource, strings.TrimSpace(out), c.allowed)
		}
	}
	// The reports a scheduled run makes work against the real apiserver as the chart's
	// ServiceAccount: its Role is enough, and nothing more is needed.
	cfg := api.RESTConfig()
	cfg.Impersonate.UserName = "system:serviceaccount:team-a:backups-vcsnap"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	target := &report.Target{Client: cs, Namespace: "team-a", JobName: "backups-vcsnap-vc1-1", JobUID: "uid-1"}
	ok := &report.Summary{Time: time.Now(), Operation: "snapshot", Outcome: "success", VirtualCluster: "vc1", Bundle: "s3://backups/vc1/x", Keys: 7}
	if err := target.Event(ctx, ok); err != nil {
		t.Fatalf("Event as the ServiceAccount: %v", err)
	}
	for _, s := range []*report.Summary{ok, {Time: time.Now(), Operation: "snapshot", Outcome: "failure", Error: "boom"}} {
		if err := target.ConfigMap(ctx, "vcsnap-status-vc1", s); err != nil {
			t.Fatalf("status ConfigMap as the ServiceAccount: %v", err)
		}
	}
	if err := target.ConfigMap(ctx, "some-other-configmap", ok); err == nil {
		t.Fatal("the ServiceAccount could write a ConfigMap that is not its status")
	}
	admin, _ := kubernetes.NewForConfig(api.RESTConfig())
	cm, err := admin.CoreV1().ConfigMaps("team-a").Get(ctx, "vcsnap-status-vc1", metav1.GetOptions{})
	if err != nil || cm.Data["lastOutcome"] != "failure" || !strings.Contains(cm.Data["lastSuccess"], `"keys":7`) {
		t.Fatalf("status ConfigMap: %v %v", cm.Data, err)
	}
	evs, err := admin.CoreV1().Events("team-a").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=backups-vcsnap-vc1-1"})
	if err != nil || len(evs.Items) != 1 || evs.Items[0].Reason != "SnapshotSucceeded" {
		t.Fatalf("events: %v %v", evs, err)
	}

	// Nothing at all in other namespaces.
	if out, _ := run(t, kubectl, kc, "auth", "can-i", "create", "events", "-n", "default", sa); strings.TrimSpace(out) != "no" { // "no", not an error
		t.Errorf("can-i create events in another namespace = %q", out)
	}
}
