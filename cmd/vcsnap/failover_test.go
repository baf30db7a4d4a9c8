package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// A store's AWS profile lives in this machine's config: the engine Job cannot use it.
func TestEngineStoreRefusesProfile(t *testing.T) {
	err := checkEngineStore("s3://backups-us/vc1/nightly?region=us-east-1&profile=dr")
	if exitCode(err) != exitUsage || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("profile= in an engine store: %v", err)
	}
	if err := checkEngineStore("s3://backups-us/vc1/nightly?region=us-east-1"); err != nil {
		t.Fatal(err)
	}
}

// restore's --volume-handle-map: every recorded handle is mapped (or the restore stops
// before touching anything), and the plan says what was mapped.
func TestRestoreVolumeHandleMap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handles.yaml")
	os.WriteFile(path, []byte("snap-0aaa: snap-0bbb\n"), 0o644)
	vols := []bundle.Volume{{Namespace: "team-a", PVC: "data", Driver: "ebs.csi.aws.com", SnapshotHandle: "snap-0aaa"}, {Namespace: "team-a", PVC: "gone", Error: "not bound"}}
	var steps []string
	out, err := mapVolumeHandles(path, vols, func(s string) { steps = append(steps, s) })
	if err != nil || out[0].SnapshotHandle != "snap-0bbb" || out[1].Error == "" || vols[0].SnapshotHandle != "snap-0aaa" {
		t.Fatalf("mapped %+v, %v", out, err)
	}
	if len(steps) != 1 || !strings.Contains(steps[0], "snap-0aaa mapped to snap-0bbb") {
		t.Fatalf("plan steps %q", steps)
	}
	vols[0].SnapshotHandle = "snap-0ccc"
	if _, err := mapVolumeHandles(path, vols, nil); exitCode(err) != exitUsage || !strings.Contains(err.Error(), "snap-0ccc") {
		t.Fatalf("an unmapped handle: %v", err)
	}
}
