package volumecopy

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/ec2standin"
)

// dummySecret is a fake credential: it must never show up in logs or requests.
const dummySecret = "dummy-secret-never-logged-0123456789"

func ebsEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDSTANDIN")
	t.Setenv("AWS_SECRET_ACCESS_KEY", dummySecret)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ENDPOINT_URL_EC2", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
}

// captureLogs sends slog's default logger to a buffer for the test.
func captureLogs(t *testing.T) *bytes.Buffer {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &buf
}

func newCopier(t *testing.T, ec2 *ec2standin.Server, timeout time.Duration) *EBSCopier {
	t.Helper()
	c, err := NewEBSCopier(context.Background(), EBSOptions{TargetRegion: "us-west-2", KMSKeyID: "alias/dr-ebs",
		Timeout: timeout, PollInterval: 5 * time.Millisecond, Bundle: "s3://b/vc1/nightly", Endpoint: ec2.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ebsVolume(pvc, handle string) bundle.Volume {
	return bundle.Volume{Namespace: "vc-a", PVC: pvc, Driver: EBSDriver, SnapshotHandle: handle, Region: "us-east-1", RestoreSize: 8 << 30}
}

// EC2 here is ec2standin, a local STAND-IN for the EC2 API (no EC2 runs on test
// machines); the client is the real aws-sdk-go-v2 EC2 client.
func TestEBSCopyWaitsForCompletionAndTags(t *testing.T) {
	ebsEnv(t)
	logs := captureLogs(t)
	ec2 := ec2standin.Start(t)
	ec2.SetPlan("snap-0aaa", ec2standin.Plan{PendingPolls: 3})
	ec2.SetPlan("snap-0bbb", ec2standin.Plan{PendingPolls: 1, InvisiblePolls: 2}) // EC2 is eventually consistent
	vols := []bundle.Volume{ebsVolume("data-0", "snap-0aaa"), ebsVolume("data-1", "snap-0bbb"), {Namespace: "vc-a", PVC: "broken", Driver: EBSDriver, Error: "snapshot failed"}}
	out, err := Rewrite(context.Background(), vols, Options{EBS: newCopier(t, ec2, time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	copies := ec2.Copies()
	if len(copies) != 2 {
		t.Fatalf("%d CopySnapshot calls, want 2", len(copies))
	}
	for i, c := range copies {
		want := vols[i]
		if c.State != "completed" || c.Region != "us-west-2" || c.SourceRegion != "us-east-1" || c.SourceID != want.SnapshotHandle ||
			!c.Encrypted || c.KMSKeyID != "alias/dr-ebs" || c.Tags[TagSourceSnapshot] != want.SnapshotHandle ||
			c.Tags[TagSourceRegion] != "us-east-1" || c.Tags[TagPVC] != "vc-a/"+want.PVC || c.Tags[TagBundle] != "s3://b/vc1/nightly" {
			t.Fatalf("copy %d: %+v", i, c)
		}
		if out[i].SnapshotHandle != c.ID || out[i].Region != "us-west-2" || out[i].PVC != want.PVC || out[i].RestoreSize != want.RestoreSize {
			t.Fatalf("record %d after the copy: %+v (copy %s)", i, out[i], c.ID)
		}
	}
	if out[2].SnapshotHandle != "" || out[2].Error == "" {
		t.Fatalf("the failed volume's record changed: %+v", out[2])
	}
	// Completion needed four answers for snap-0aaa: three pending, then completed.
	if n := strings.Count(strings.Join(ec2.Calls(), " "), "DescribeSnapshots"); n < 2+4 {
		t.Fatalf("calls %v: the copies were not waited for", ec2.Calls())
	}
	// Run again: the completed copies are found by their tags and reused.
	again, err := Rewrite(context.Background(), vols, Options{EBS: newCopier(t, ec2, time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ec2.Copies()) != 2 || again[0].SnapshotHandle != out[0].SnapshotHandle || again[1].SnapshotHandle != out[1].SnapshotHandle {
		t.Fatalf("a second run started new copies: %+v", again)
	}
	for _, a := range ec2.Authorization() {
		if strings.Contains(a, dummySecret) {
			t.Fatal("the secret key was sent")
		}
	}
	if strings.Contains(logs.String(), dummySecret) || strings.Contains(logs.String(), "AKIDSTANDIN") {
		t.Fatalf("credentials in the logs:\n%s", logs)
	}
}

func TestEBSCopyErrorState(t *testing.T) {
	ebsEnv(t)
	ec2 := ec2standin.Start(t)
	ec2.SetPlan("snap-0aaa", ec2standin.Plan{PendingPolls: 2, FailWith: "KMS key alias/dr-ebs is not accessible"})
	_, err := Rewrite(context.Background(), []bundle.Volume{ebsVolume("data-0", "snap-0aaa")}, Options{EBS: newCopier(t, ec2, time.Minute)})
	if err == nil || !strings.Contains(err.Error(), "KMS key alias/dr-ebs is not accessible") || !strings.Contains(err.Error(), "state error") ||
		!strings.Contains(err.Error(), ec2.Copies()[0].ID) || !strings.Contains(err.Error(), "snap-0aaa") {
		t.Fatalf("error state: %v", err)
	}
	// A failed copy is not reused: the next run starts a new one.
	ec2.SetPlan("snap-0aaa", ec2standin.Plan{})
	out, err := Rewrite(context.Background(), []bundle.Volume{ebsVolume("data-0", "snap-0aaa")}, Options{EBS: newCopier(t, ec2, time.Minute)})
	if err != nil || len(ec2.Copies()) != 2 || out[0].SnapshotHandle != ec2.Copies()[1].ID {
		t.Fatalf("retry after an error state: %v, %+v", err, ec2.Copies())
	}
}

func TestEBSCopyTimeout(t *testing.T) {
	ebsEnv(t)
	ec2 := ec2standin.Start(t)
	ec2.SetPlan("snap-0aaa", ec2standin.Plan{Stuck: true})
	_, err := Rewrite(context.Background(), []bundle.Volume{ebsVolume("data-0", "snap-0aaa")}, Options{EBS: newCopier(t, ec2, 50*time.Millisecond)})
	if err == nil || !strings.Contains(err.Error(), "still pending") || !strings.Contains(err.Error(), ec2.Copies()[0].ID) {
		t.Fatalf("timeout: %v", err)
	}
	// A copy EC2 keeps denying knowing fails once the grace is over.
	ec2.SetPlan("snap-0ddd", ec2standin.Plan{InvisiblePolls: 1 << 30})
	_, err = Rewrite(context.Background(), []bundle.Volume{ebsVolume("data-1", "snap-0ddd")}, Options{EBS: newCopier(t, ec2, 50*time.Millisecond)})
	if err == nil || !strings.Contains(err.Error(), "InvalidSnapshot.NotFound") {
		t.Fatalf("a copy never visible: %v", err)
	}
	// Cancellation stops the wait too, naming the copies left running.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := newCopier(t, ec2, time.Hour).wait(ctx, map[string]string{ec2.Copies()[0].ID: "x"}); err == nil {
		t.Fatal("a cancelled wait returned nil")
	}
}

func TestOtherDriversNeedAHandleMap(t *testing.T) {
	vols := []bundle.Volume{
		ebsVolume("data-0", "snap-0aaa"),
		{Namespace: "vc-a", PVC: "data-1", Driver: "pd.csi.storage.gke.io", SnapshotHandle: "projects/p/global/snapshots/s1"},
	}
	_, err := Rewrite(context.Background(), vols, Options{})
	if err == nil || !strings.Contains(err.Error(), `CSI driver "pd.csi.storage.gke.io"`) || !strings.Contains(err.Error(), "--volume-handle-map") ||
		!strings.Contains(err.Error(), "--copy-volumes") {
		t.Fatalf("unmapped volumes: %v", err)
	}
	dir := t.TempDir()
	yml := filepath.Join(dir, "map.yaml")
	os.WriteFile(yml, []byte("snap-0aaa: snap-0ccc\nprojects/p/global/snapshots/s1: projects/p/global/snapshots/s1-dr\n"), 0o644)
	m, err := LoadHandleMap(yml)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Rewrite(context.Background(), vols, Options{HandleMap: m, Region: "europe-west4"})
	if err != nil || out[0].SnapshotHandle != "snap-0ccc" || out[1].SnapshotHandle != "projects/p/global/snapshots/s1-dr" || out[1].Region != "europe-west4" {
		t.Fatalf("mapped: %v %+v", err, out)
	}
	if vols[0].SnapshotHandle != "snap-0aaa" {
		t.Fatal("Rewrite changed its input")
	}
	// The restore's mapping: JSON works too, and a missing entry is an error naming it.
	js := filepath.Join(dir, "map.json")
	os.WriteFile(js, []byte(`{"snap-0aaa": "snap-0ddd"}`), 0o644)
	m, err = LoadHandleMap(js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MapHandles(vols, m, ""); err == nil || !strings.Contains(err.Error(), "projects/p/global/snapshots/s1") {
		t.Fatalf("missing entry: %v", err)
	}
	got, err := MapHandles(vols[:1], m, "")
	if err != nil || got[0].SnapshotHandle != "snap-0ddd" || got[0].Region != "us-east-1" {
		t.Fatalf("MapHandles: %v %+v", err, got)
	}
	for _, bad := range []string{"- a\n- b\n", "a: \n", "a: {b: c}\n"} {
		os.WriteFile(yml, []byte(bad), 0o644)
		if _, err := LoadHandleMap(yml); err == nil {
			t.Fatalf("map %q accepted", bad)
		}
	}
}
