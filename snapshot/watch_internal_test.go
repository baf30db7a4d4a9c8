package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
)

// fakeFollow stands in for a datastore in this unit test of resume's choice; the real
// watcher runs against real datastores in test/e2e (TestWatchPointInTime).
type fakeFollow struct{ rev, compacted int64 }

func (f fakeFollow) Kind() string { return "etcd" }
func (f fakeFollow) Close() error { return nil }
func (f fakeFollow) Follow(context.Context, int64, time.Duration, datastore.DeliverFunc) error {
	return nil
}
func (f fakeFollow) Revision(context.Context) (int64, error) { return f.rev, nil }
func (f fakeFollow) CheckFollow(_ context.Context, after int64) error {
	if after < f.compacted {
		return datastore.ErrCompacted
	}
	return nil
}

func writeTestBundle(t *testing.T, dir, name string, kind bundle.Kind, base, rev int64, at time.Time) {
	t.Helper()
	var buf bytes.Buffer
	w, err := bundle.NewWriter(&buf, bundle.WriterOptions{Kind: kind, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteMeta(&bundle.Meta{})
	if _, err := w.Close(bundle.Manifest{Revision: rev, BaseRevision: base, Chain: "c1", Source: bundle.Source{Datastore: "etcd"}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A watcher killed after storing a full bundle but before the delta that links it
// resumes so that the next delta links it: ending at its revision when the deltas had
// not reached it, starting from it when they had gone past it.
func TestResumeLinksAFullBundleStoredBeforeAKill(t *testing.T) {
	t.Run("deltas past it", func(t *testing.T) {
		dir := t.TempDir()
		t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
		writeTestBundle(t, dir, "1-full", bundle.KindFull, 0, 10, t0)
		writeTestBundle(t, dir, "2-delta", bundle.KindDelta, 10, 20, t0.Add(time.Second))
		writeTestBundle(t, dir, "3-full", bundle.KindFull, 0, 15, t0.Add(2*time.Second))
		w := &watcher{o: WatchOptions{Source: bundle.Source{Datastore: "etcd"}}, store: storage.NewFileStore("/"),
			prefixURL: "file://" + dir + "/", follow: fakeFollow{rev: 40}}
		if err := w.resume(context.Background()); err != nil {
			t.Fatal(err)
		}
		if w.chain != "c1" || w.lastCut != 15 || w.boundary != 0 {
			t.Fatalf("resume: chain %q from %d linking %d, want c1 from 15", w.chain, w.lastCut, w.boundary)
		}
	})
	dir := t.TempDir()
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	writeTestBundle(t, dir, "1-full", bundle.KindFull, 0, 10, t0)
	writeTestBundle(t, dir, "2-delta", bundle.KindDelta, 10, 20, t0.Add(time.Second))
	writeTestBundle(t, dir, "3-full", bundle.KindFull, 0, 30, t0.Add(2*time.Second))
	for _, tc := range []struct {
		name              string
		src               fakeFollow
		chain             string
		lastCut, boundary int64
	}{
		{"continue", fakeFollow{rev: 40}, "c1", 20, 30},
		{"compacted", fakeFollow{rev: 40, compacted: 25}, "", 0, 0},
		{"other datastore", fakeFollow{rev: 15}, "", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &watcher{o: WatchOptions{Source: bundle.Source{Datastore: "etcd"}}, store: storage.NewFileStore("/"),
				prefixURL: "file://" + dir + "/", follow: tc.src}
			if err := w.resume(context.Background()); err != nil {
				t.Fatal(err)
			}
			if w.chain != tc.chain || w.lastCut != tc.lastCut || w.boundary != tc.boundary {
				t.Fatalf("resume: chain %q from %d linking %d, want %q from %d linking %d", w.chain, w.lastCut, w.boundary, tc.chain, tc.lastCut, tc.boundary)
			}
		})
	}
}
