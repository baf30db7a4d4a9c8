package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/ec2standin"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/volumecopy"
)

// TestCopyVolumesCLI runs `vcsnap snapshot copy --copy-volumes` against ec2standin, a
// local STAND-IN for the EC2 API (no EC2 runs on test machines), reached by the real
// aws-sdk-go-v2 client in the vcsnap binary through AWS_ENDPOINT_URL_EC2. The EBS
// snapshot is copied, waited for and tagged; the other driver's snapshot needs the
// handle map; the copied bundle records the new handles and verifies.
func TestCopyVolumesCLI(t *testing.T) {
	rig.RequireIntegration(t)
	ec2 := ec2standin.Start(t)
	ec2.SetPlan("snap-0aaa", ec2standin.Plan{PendingPolls: 2})
	dir := t.TempDir()
	vols := []bundle.Volume{
		{Namespace: "vc-a", PVC: "data-0", Driver: volumecopy.EBSDriver, SnapshotHandle: "snap-0aaa", Region: "eu-west-1", RestoreSize: 1 << 30},
		{Namespace: "vc-a", PVC: "data-1", Driver: "nfs.csi.k8s.io", SnapshotHandle: "nfs-snap-1"},
	}
	src := filepath.Join(dir, "eu", "vc1")
	os.MkdirAll(filepath.Dir(src), 0o755)
	os.WriteFile(src, makeBundle(t, 1<<20, vols), 0o644)
	const secret = "dummy-secret-for-the-stand-in-0123456789"
	cli := newCLI(t, nil)
	cli.env = append(cli.env, "AWS_ACCESS_KEY_ID=AKIDSTANDIN", "AWS_SECRET_ACCESS_KEY="+secret, "AWS_ENDPOINT_URL_EC2="+ec2.URL)
	dst := "file://" + filepath.Join(dir, "us", "vc1")
	args := []string{"snapshot", "copy", "file://" + src, dst, "--copy-volumes", "--volume-region-to", "us-east-1", "--kms-key-id", "alias/dr", "--volume-timeout", "1m", "--volume-poll-interval", "10ms"}

	r := cli.run(t, args...)
	if r.Code == 0 || !strings.Contains(r.Stderr, `CSI driver "nfs.csi.k8s.io"`) || !strings.Contains(r.Stderr, "--volume-handle-map") {
		t.Fatalf("copy of an unmapped non-EBS volume: %s", r)
	}
	if len(ec2.Copies()) != 0 {
		t.Fatal("EC2 copies started although the copy was refused")
	}
	if _, err := os.Stat(filepath.Join(dir, "us", "vc1")); !os.IsNotExist(err) {
		t.Fatalf("a refused copy left a destination: %v", err)
	}

	hm := filepath.Join(dir, "handles.yaml")
	os.WriteFile(hm, []byte("nfs-snap-1: nfs-snap-1-dr\n"), 0o644)
	var res snapshot.CopyResult
	cli.mustJSON(t, &res, append(args, "--volume-handle-map", hm)...)
	copies := ec2.Copies()
	if len(copies) != 1 || copies[0].State != "completed" || copies[0].SourceRegion != "eu-west-1" || copies[0].Region != "us-east-1" || copies[0].KMSKeyID != "alias/dr" {
		t.Fatalf("EC2 copies %+v", copies)
	}
	var e snapshot.Entry
	cli.mustJSON(t, &e, "snapshot", "describe", dst)
	got := e.Manifest.Volumes
	if !res.VolumesRewritten || len(got) != 2 || got[0].SnapshotHandle != copies[0].ID || got[0].Region != "us-east-1" ||
		got[1].SnapshotHandle != "nfs-snap-1-dr" || got[1].Region != "us-east-1" || got[0].RestoreSize != 1<<30 {
		t.Fatalf("destination volumes %+v", got)
	}
	if r := cli.run(t, "snapshot", "describe", dst); r.Code != 0 || !strings.Contains(r.Stdout, copies[0].ID+" in us-east-1") ||
		!strings.Contains(r.Stdout, "nfs.csi.k8s.io snapshot nfs-snap-1-dr in us-east-1") {
		t.Fatalf("describe does not show the new handles: %s", r)
	}
	if r := cli.run(t, "snapshot", "verify", dst); r.Code != 0 {
		t.Fatalf("verify the copy: %s", r)
	}
	if r := cli.run(t, "snapshot", "verify", "file://"+src); r.Code != 0 {
		t.Fatalf("verify the source: %s", r)
	}
	for _, a := range ec2.Authorization() {
		if strings.Contains(a, secret) {
			t.Fatal("the secret key was sent")
		}
	}
	if strings.Contains(r.Stderr+r.Stdout, secret) {
		t.Fatal("the secret key was logged")
	}
}
