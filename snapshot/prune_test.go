package snapshot_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// writeDated writes a small valid bundle whose manifest says it was created at t.
func writeDated(t *testing.T, path string, at time.Time) {
	t.Helper()
	var buf bytes.Buffer
	w, err := bundle.NewWriter(&buf, bundle.WriterOptions{Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteMeta(&bundle.Meta{Source: bundle.Source{Datastore: "etcd"}})
	w.WritePut(&bundle.KeyValue{Key: []byte("/registry/k"), Value: bytes.Repeat([]byte("v"), 100000), ModRevision: 1})
	if _, err := w.Close(bundle.Manifest{Revision: 1}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

var history = map[string]string{
	"A": "2026-11-21T12:00:00Z", "B": "2026-11-21T06:00:00Z", "C": "2026-11-21T00:00:00Z",
	"D": "2026-11-20T18:00:00Z", "E": "2026-11-20T06:00:00Z", "F": "2026-11-19T12:00:00Z",
	"G": "2026-11-15T12:00:00Z", // ISO week 46
	"H": "2026-11-08T12:00:00Z", // ISO week 45
	"I": "2026-10-31T12:00:00Z", "J": "2026-10-01T12:00:00Z", "K": "2026-09-15T12:00:00Z",
}

func makeHistory(t *testing.T) string {
	dir := t.TempDir()
	for name, ts := range history {
		at, _ := time.Parse(time.RFC3339, ts)
		writeDated(t, filepath.Join(dir, "snap-"+name), at)
	}
	return dir
}

func survivors(t *testing.T, dir string) string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimPrefix(e.Name(), "snap-"))
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func TestPruneKeepsExactlyThePolicy(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		policy snapshot.Policy
		want   string
	}{
		// last: A B; daily: A (21st) D (20th) F (19th); weekly: A (W47) G (W46) H (W45);
		// monthly: A (Nov) I (Oct).
		{"buckets", snapshot.Policy{Last: 2, Daily: 3, Weekly: 3, Monthly: 2}, "A,B,D,F,G,H,I"},
		// 30h back from the newest snapshot (not from now): A..E, E exactly on the edge.
		{"within", snapshot.Policy{Within: 30 * time.Hour}, "A,B,C,D,E"},
		{"hourly", snapshot.Policy{Hourly: 4}, "A,B,C,D"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := makeHistory(t)
			res, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{Policy: tc.policy, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := survivors(t, dir); got != "A,B,C,D,E,F,G,H,I,J,K" || !res.DryRun {
				t.Fatalf("dry run deleted something: %s", got)
			}
			if _, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{Policy: tc.policy}); err != nil {
				t.Fatal(err)
			}
			if got := survivors(t, dir); got != tc.want {
				t.Fatalf("survivors %s, want %s", got, tc.want)
			}
		})
	}
}

// The newest bundle that verifies survives whatever the rules say; damaged ones are left
// for a person; abandoned uploads go after the grace period.
func TestPruneNeverDeletesNewestVerified(t *testing.T) {
	ctx := context.Background()
	dir := makeHistory(t)
	// Damage A's body: its manifest still reads, but it fails verification.
	a := filepath.Join(dir, "snap-A")
	data, _ := os.ReadFile(a)
	data[200] ^= 0xff
	os.WriteFile(a, data, 0o644)
	os.WriteFile(filepath.Join(dir, "snap-Z"), []byte("\x89VCSNAP\ntruncated"), 0o644)
	now := time.Date(2026, 11, 21, 13, 0, 0, 0, time.UTC)
	oldPart, newPart := filepath.Join(dir, "snap-X.vcsnap-1.part"), filepath.Join(dir, "snap-Y.vcsnap-2.part")
	// Another program's part file, as old as the abandoned upload: not vcsnap's to remove.
	foreign := filepath.Join(dir, "snap-old.abc123.part")
	os.WriteFile(oldPart, []byte("abandoned"), 0o644)
	os.WriteFile(newPart, []byte("running"), 0o644)
	os.WriteFile(foreign, []byte("someone else's"), 0o644)
	os.Chtimes(oldPart, now.Add(-48*time.Hour), now.Add(-48*time.Hour))
	os.Chtimes(newPart, now.Add(-time.Minute), now.Add(-time.Minute))
	os.Chtimes(foreign, now.Add(-48*time.Hour), now.Add(-48*time.Hour))

	res, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{Policy: snapshot.Policy{Last: 1}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// A: kept by "last 1" (a person must look at it); B: the newest that verifies; Z: damaged, left.
	if got := survivors(t, dir); got != "A,B,Y.vcsnap-2.part,Z,old.abc123.part" {
		t.Fatalf("survivors %s", got)
	}
	if len(res.Incomplete) != 2 {
		t.Fatalf("incomplete decisions %+v", res.Incomplete)
	}
	if _, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{}); err == nil {
		t.Fatal("prune without a keep rule accepted")
	}
}

// Clusters sharing a store prefix, with names that prefix each other, never prune each
// other's bundles.
func TestPruneOnlyItsOwnCluster(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for i, vc := range []string{"team", "team", "team-b", "team-b", "team-b"} {
		var buf bytes.Buffer
		at := time.Date(2026, 11, 1+i, 0, 0, 0, 0, time.UTC)
		w, _ := bundle.NewWriter(&buf, bundle.WriterOptions{Now: func() time.Time { return at }})
		src := bundle.Source{Datastore: "etcd", VClusterName: vc, VClusterNamespace: "ns"}
		w.WriteMeta(&bundle.Meta{Source: src})
		if _, err := w.Close(bundle.Manifest{Revision: 1, Source: src}); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d", vc, i)), buf.Bytes(), 0o644)
	}
	_, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{Policy: snapshot.Policy{Last: 1},
		VClusterName: "team", VClusterNamespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); got != "team-1,team-b-2,team-b-3,team-b-4" {
		t.Fatalf("survivors %s: team's prune touched team-b", got)
	}
}
