package byname

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/volumecopy"
)

// A store's AWS profile lives in this machine's config, and a file is on this machine:
// the engine Job can use neither.
func TestEngineStoreRefusesWhatTheJobCannotReach(t *testing.T) {
	for _, store := range []string{"s3://backups-us/vc1/nightly?region=us-east-1&profile=dr", "file:///backups/vc1"} {
		if err := checkEngineStore(store); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v, want ErrOption", store, err)
		}
	}
	if err := checkEngineStore("s3://backups-us/vc1/nightly?profile=dr"); !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("the profile refusal does not say what to do: %v", err)
	}
	if err := checkEngineStore("s3://backups-us/vc1/nightly?region=us-east-1"); err != nil {
		t.Fatal(err)
	}
}

// A volume handle map: every recorded handle is mapped (or the restore stops before
// touching anything), and the plan says what was mapped.
func TestRestoreVolumeHandleMap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handles.yaml")
	if err := os.WriteFile(path, []byte("snap-0aaa: snap-0bbb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := volumecopy.LoadHandleMap(path)
	if err != nil {
		t.Fatal(err)
	}
	vols := []bundle.Volume{{Namespace: "team-a", PVC: "data", Driver: "ebs.csi.aws.com", SnapshotHandle: "snap-0aaa"}, {Namespace: "team-a", PVC: "gone", Error: "not bound"}}
	var steps []string
	out, err := mapHandles(vols, m, func(s string) { steps = append(steps, s) })
	if err != nil || out[0].SnapshotHandle != "snap-0bbb" || out[1].Error == "" || vols[0].SnapshotHandle != "snap-0aaa" {
		t.Fatalf("mapped %+v, %v", out, err)
	}
	if len(steps) != 1 || !strings.Contains(steps[0], "snap-0aaa mapped to snap-0bbb") {
		t.Fatalf("plan steps %q", steps)
	}
	vols[0].SnapshotHandle = "snap-0ccc"
	if _, err := mapHandles(vols, m, nil); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "snap-0ccc") {
		t.Fatalf("an unmapped handle: %v", err)
	}
}
