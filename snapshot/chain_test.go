package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// A fast check of the chain logic on bundles written by the real writer into a file
// store; the real watcher against real datastores is proved in test/e2e (TestWatch*).

type rec struct {
	key   string
	value string // "" with del: a delete
	rev   int64
	lease int64
	del   bool
}

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func writeChainBundle(t *testing.T, dir, name string, kind bundle.Kind, chain string, base, rev int64, at time.Time, recs []rec) {
	t.Helper()
	var buf bytes.Buffer
	w, err := bundle.NewWriter(&buf, bundle.WriterOptions{Kind: kind, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMeta(&bundle.Meta{Source: bundle.Source{Datastore: "etcd"}}); err != nil {
		t.Fatal(err)
	}
	leases := map[int64]bool{}
	for _, r := range recs {
		if r.del {
			err = w.WriteDelete(&bundle.Delete{Key: []byte(r.key), ModRevision: r.rev})
		} else {
			if r.lease != 0 && !leases[r.lease] {
				if err := w.WriteLease(bundle.Lease{ID: r.lease, TTL: 60, GrantedTTL: 60}); err != nil {
					t.Fatal(err)
				}
				leases[r.lease] = true
			}
			err = w.WritePut(&bundle.KeyValue{Key: []byte(r.key), Value: []byte(r.value), CreateRevision: r.rev, ModRevision: r.rev, Version: 1, Lease: r.lease})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(bundle.Manifest{Revision: rev, BaseRevision: base, Chain: chain, Source: bundle.Source{Datastore: "etcd"}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeChain writes full@10 and deltas (10,20], (20,30], (30,40] of chain c1.
func makeChain(t *testing.T) string {
	dir := t.TempDir()
	writeChainBundle(t, dir, "a-full", bundle.KindFull, "c1", 0, 10, t0, []rec{{key: "/a", value: "a1", rev: 2}, {key: "/b", value: "b1", rev: 3}, {key: "/c", value: "c1", rev: 4}})
	writeChainBundle(t, dir, "b-delta", bundle.KindDelta, "c1", 10, 20, t0.Add(5*time.Second), []rec{{key: "/a", value: "a2", rev: 15}, {key: "/b", del: true, rev: 18}})
	writeChainBundle(t, dir, "c-delta", bundle.KindDelta, "c1", 20, 30, t0.Add(10*time.Second), []rec{{key: "/d", value: "d1", rev: 25, lease: 7}, {key: "/0", value: "z", rev: 29}})
	writeChainBundle(t, dir, "d-delta", bundle.KindDelta, "c1", 30, 40, t0.Add(15*time.Second), []rec{{key: "/a", value: "a3", rev: 35}})
	// A bundle of snapshot create under the same prefix is never used for a point.
	writeChainBundle(t, dir, "e-other", bundle.KindFull, "", 0, 38, t0.Add(20*time.Second), []rec{{key: "/x", value: "x", rev: 1}})
	return dir
}

type collect struct{ out []string }

func (c *collect) Lease(l bundle.Lease) error { c.out = append(c.out, "lease "+itoa(l.ID)); return nil }
func (c *collect) Put(kv *bundle.KeyValue) error {
	c.out = append(c.out, string(kv.Key)+"="+string(kv.Value))
	return nil
}

func itoa(i int64) string { return strings.TrimSpace(strings.Repeat(" ", 0) + string(rune('0'+i%10))) }

func stateAt(t *testing.T, dir string, p snapshot.Point, lastGood bool) (string, *snapshot.PointInTime, error) {
	t.Helper()
	ctx := context.Background()
	pit, err := snapshot.PreparePointInTime(ctx, "file://"+dir+"/", p, lastGood, snapshot.ReadOptions{})
	if err != nil {
		return "", nil, err
	}
	var c collect
	if _, err := snapshot.Fold(ctx, pit.Store, pit.Plan.Full, pit.Changes, snapshot.ReadOptions{}, &c); err != nil {
		t.Fatal(err)
	}
	return strings.Join(c.out, " "), pit, nil
}

func TestChainPointInTime(t *testing.T) {
	dir := makeChain(t)
	for _, tc := range []struct {
		p    snapshot.Point
		want string
	}{
		{snapshot.Point{Revision: 10}, "/a=a1 /b=b1 /c=c1"},
		{snapshot.Point{Revision: 16}, "/a=a2 /b=b1 /c=c1"},
		{snapshot.Point{Revision: 27}, "/a=a2 /c=c1 lease 7 /d=d1"},
		{snapshot.Point{Revision: 40}, "/0=z /a=a3 /c=c1 lease 7 /d=d1"},
		{snapshot.Point{Time: t0.Add(12 * time.Second)}, "/0=z /a=a2 /c=c1 lease 7 /d=d1"},
	} {
		got, _, err := stateAt(t, dir, tc.p, false)
		if err != nil {
			t.Fatalf("%s: %v", tc.p, err)
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.p, got, tc.want)
		}
	}
	if _, _, err := stateAt(t, dir, snapshot.Point{Revision: 41}, false); !errors.Is(err, snapshot.ErrNoPoint) {
		t.Errorf("a revision beyond the chain: %v, want ErrNoPoint", err)
	}
	if _, _, err := stateAt(t, dir, snapshot.Point{Revision: 5}, false); !errors.Is(err, snapshot.ErrNoPoint) {
		t.Errorf("a revision before the full bundle: %v, want ErrNoPoint", err)
	}

	chains, orphans := snapshot.Chains(mustList(t, dir))
	var got []string
	for _, c := range chains {
		got = append(got, c.Full.Name+":"+itoa(int64(len(c.Deltas)))+":"+c.ID)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.TrimPrefix(dir, "/")+"/a-full:3:c1,"+strings.TrimPrefix(dir, "/")+"/e-other:0:" || len(orphans) != 0 {
		t.Errorf("chains %v, orphans %v", got, orphans)
	}
}

func mustList(t *testing.T, dir string) []*snapshot.Entry {
	t.Helper()
	e, err := snapshot.List(context.Background(), "file://"+dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestChainGapIsRefused(t *testing.T) {
	for _, damage := range []string{"missing", "corrupt"} {
		t.Run(damage, func(t *testing.T) {
			dir := makeChain(t)
			p := filepath.Join(dir, "c-delta")
			if damage == "missing" {
				os.Remove(p)
			} else {
				b, _ := os.ReadFile(p)
				b[len(b)/3] ^= 0xff // inside the body: the tail still reads
				os.WriteFile(p, b, 0o644)
			}
			_, _, err := stateAt(t, dir, snapshot.Point{Revision: 35}, false)
			var gap *snapshot.GapError
			if !errors.As(err, &gap) || gap.Gap.After != 20 || gap.Gap.Before != 30 || gap.LastGood != 20 {
				t.Fatalf("restore across a %s delta: %v, want a gap of revisions 21 to 30", damage, err)
			}
			if !strings.Contains(err.Error(), "revisions 21 to 30 are missing") {
				t.Errorf("message does not name the range: %v", err)
			}
			if damage == "corrupt" && !strings.Contains(err.Error(), "c-delta failed verification") {
				t.Errorf("message does not name the damaged delta: %v", err)
			}
			got, pit, err := stateAt(t, dir, snapshot.Point{Revision: 35}, true)
			if err != nil {
				t.Fatal(err)
			}
			if got != "/a=a2 /c=c1" || pit.Plan.Revision != 20 || pit.Plan.Gap == nil {
				t.Fatalf("up to last good: %q at %d (gap %v), want the state at 20", got, pit.Plan.Revision, pit.Plan.Gap)
			}
			// Points before the gap still restore exactly.
			if got, _, err := stateAt(t, dir, snapshot.Point{Revision: 19}, false); err != nil || got != "/a=a2 /c=c1" {
				t.Fatalf("revision 19: %q, %v", got, err)
			}
		})
	}
}

func TestCompactAndPruneKeepChainsWhole(t *testing.T) {
	dir := makeChain(t)
	ctx := context.Background()
	res, err := snapshot.Compact(ctx, "file://"+dir+"/", snapshot.CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Revision != 40 || res.Folded != 3 || res.Manifest.Keys != 4 || res.Chain != "c1" {
		t.Fatalf("compact: %+v %+v", res, res.Manifest)
	}
	// A delta after the compacted bundle continues both full bundles.
	writeChainBundle(t, dir, "z-delta", bundle.KindDelta, "c1", 40, 50, time.Now().Add(time.Minute), []rec{{key: "/c", del: true, rev: 45}})
	got, pit, err := stateAt(t, dir, snapshot.Point{Revision: 50}, false)
	if err != nil || got != "/0=z /a=a3 lease 7 /d=d1" || len(pit.Plan.Deltas) != 1 {
		t.Fatalf("after compaction: %q %v", got, err)
	}
	pr, err := snapshot.Prune(ctx, "file://"+dir+"/", snapshot.PruneOptions{Policy: snapshot.Policy{Last: 2}})
	if err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(dir)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	// Kept: the compacted chain (full + its delta) and the create bundle; the old chain
	// went whole, deltas and full together.
	if len(names) != 3 || !strings.Contains(strings.Join(names, " "), "e-other") || !strings.Contains(strings.Join(names, " "), "z-delta") {
		t.Fatalf("after prune --keep-last 2: %v (%+v)", names, pr.Bundles)
	}
	if got, _, err := stateAt(t, dir, snapshot.Point{Revision: 45}, false); err != nil || got != "/0=z /a=a3 lease 7 /d=d1" {
		t.Fatalf("after prune: %q %v", got, err)
	}
}
