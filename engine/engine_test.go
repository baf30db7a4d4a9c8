package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// TestResultFitsTheTerminationMessage: whatever a run returns, its encoding fits what the
// kubelet keeps of a termination message and still decodes, with what matters kept.
func TestResultFitsTheTerminationMessage(t *testing.T) {
	deltas := make([]string, 200)
	for i := range deltas {
		deltas[i] = "s3://bucket/vc1/pitr/chain-0123456789/delta-" + strings.Repeat("x", 40)
	}
	vols := make([]bundle.Volume, 50)
	for i := range vols {
		vols[i] = bundle.Volume{Namespace: "team-a", PVC: strings.Repeat("p", 60), Driver: "csi.example", SnapshotHandle: strings.Repeat("h", 80)}
	}
	big := Result{Restore: &restore.Result{
		URL: "s3://bucket/vc1/pitr/", Revision: 4711, PreviousKeys: 300, SafetyBackup: "s3://bucket/vc1/pitr.pre-restore-x",
		Manifest: &bundle.Manifest{Keys: 9, Volumes: vols},
		Point:    &restore.PointResult{Asked: "revision 4700", Full: "s3://bucket/full", Deltas: deltas, Revision: 4700, Captured: time.Now()},
	}}
	for name, r := range map[string]Result{
		"small":      {Restore: &restore.Result{URL: "s3://b/k", Revision: 12}},
		"big":        big,
		"long error": {ExitCode: 5, Error: "refused: " + strings.Repeat("the target holds keys; ", 500) + "pass --force"},
	} {
		b := EncodeResult(r)
		if len(b) > MaxResultBytes {
			t.Errorf("%s: %d bytes, more than %d", name, len(b), MaxResultBytes)
		}
		got, err := DecodeResult(string(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Version != Version || got.ExitCode != r.ExitCode {
			t.Errorf("%s: %+v", name, got)
		}
		if r.Restore != nil && (got.Restore == nil || got.Restore.Revision != r.Restore.Revision || got.Restore.SafetyBackup != r.Restore.SafetyBackup) {
			t.Errorf("%s: restore result lost: %+v", name, got.Restore)
		}
		if r.Error != "" && (!strings.HasPrefix(got.Error, "refused: ") || !strings.HasSuffix(got.Error, "pass --force")) {
			t.Errorf("%s: error %q lost its start or end", name, got.Error)
		}
	}
	if got, _ := DecodeResult(string(EncodeResult(big))); !got.Trimmed || got.Restore.Point == nil || got.Restore.Point.Revision != 4700 {
		t.Errorf("big: want a trimmed result that keeps the point's revision: %+v", got)
	}
	if got, _ := DecodeResult(string(EncodeResult(big))); got.Restore.Manifest == nil || got.Restore.Manifest.Keys != 9 {
		t.Errorf("big: the manifest's counts were dropped although its lists alone made it too long: %+v", got.Restore.Manifest)
	}
	if _, err := DecodeResult(""); err == nil {
		t.Error("an empty termination message decoded")
	}
}

func TestRequestCheck(t *testing.T) {
	for _, r := range []Request{
		{Version: Version + 1, Snapshot: &SnapshotRequest{}},
		{Version: Version},
		{Version: Version, Snapshot: &SnapshotRequest{}, Restore: &RestoreRequest{}},
	} {
		if err := r.Check(); err == nil {
			t.Errorf("%+v: accepted", r)
		}
	}
	if err := (&Request{Version: Version, Restore: &RestoreRequest{}}).Check(); err != nil {
		t.Error(err)
	}
}
