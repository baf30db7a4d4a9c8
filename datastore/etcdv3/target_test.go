package etcdv3_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/test/embedetcd"
)

// The revision is raised before any key is written: every restored key's mod revision
// (an object's resourceVersion) is above max(snapshot, target) + bump, whatever the gap,
// including gaps too small for every revision-bump writer to have its own key.
func TestRevisionRaisedBeforeKeys(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ snapRev, bump int64 }{{0, 1}, {0, 2}, {0, 3}, {0, 33}, {40, 1}, {40, 1000}} {
		t.Run(fmt.Sprintf("snapshot%d-bump%d", c.snapRev, c.bump), func(t *testing.T) {
			snapRev, bump := c.snapRev, c.bump
			e, cli := embedetcd.ForTest(t)
			tgt, err := etcdv3.OpenTarget(ctx, etcdv3.Config{Endpoints: []string{e.Endpoint}}, etcdv3.TargetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer tgt.Close()
			st, err := tgt.Prepare(ctx, datastore.PrepareOptions{SnapshotRevision: snapRev, Keys: 3, BumpRevision: bump})
			if err != nil {
				t.Fatal(err)
			}
			want := max(snapRev, st.Revision) + bump
			if err := tgt.Begin(ctx); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				kv := datastore.KeyValue{Key: []byte(fmt.Sprintf("/registry/k%d", i)), Value: []byte("v")}
				if err := tgt.Put(ctx, &kv); err != nil {
					t.Fatal(err)
				}
			}
			final, err := tgt.Commit(ctx)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := cli.Get(ctx, "/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) != 3 {
				t.Fatalf("%d keys after the restore, want the 3 restored (no revision-bump keys left)", len(resp.Kvs))
			}
			for _, kv := range resp.Kvs {
				if kv.ModRevision <= want || kv.CreateRevision <= want {
					t.Errorf("%s written at revision %d, not above %d", kv.Key, kv.ModRevision, want)
				}
			}
			if final < want || resp.Header.Revision != final {
				t.Fatalf("final revision %d (store at %d), want >= %d", final, resp.Header.Revision, want)
			}
			if final > want+3+etcdv3.BumpWriters {
				t.Errorf("final revision %d overshoots %d by more than the writers can", final, want)
			}
		})
	}
}

// A lease with little time left at capture must not expire while the restore is still
// writing keys that use it: leases are kept alive until Commit, then count down.
func TestShortLeaseSurvivesALongRestore(t *testing.T) {
	ctx := context.Background()
	e, cli := embedetcd.ForTest(t)
	tgt, err := etcdv3.OpenTarget(ctx, etcdv3.Config{Endpoints: []string{e.Endpoint}}, etcdv3.TargetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	if _, err := tgt.Prepare(ctx, datastore.PrepareOptions{Keys: 2, BumpRevision: 1}); err != nil {
		t.Fatal(err)
	}
	if err := tgt.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tgt.Lease(ctx, datastore.Lease{ID: 9, TTL: 1, GrantedTTL: 60}); err != nil {
		t.Fatal(err)
	}
	first := datastore.KeyValue{Key: []byte("/registry/events/a/1"), Value: []byte("e1"), Lease: 9}
	if err := tgt.Put(ctx, &first); err != nil {
		t.Fatal(err)
	}
	// The restore goes on for longer than the lease had left (etcd's minimum TTL is a
	// few seconds, so wait clearly past it).
	start := time.Now()
	for time.Since(start) < 6*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	last := datastore.KeyValue{Key: []byte("/registry/events/z/2"), Value: []byte("e2"), Lease: 9}
	if err := tgt.Put(ctx, &last); err != nil {
		t.Fatal(err)
	}
	if _, err := tgt.Commit(ctx); err != nil {
		t.Fatalf("a lease expired during the restore: %v", err)
	}
	resp, err := cli.Get(ctx, "/registry/events/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 || resp.Kvs[0].Lease == 0 || resp.Kvs[0].Lease != resp.Kvs[1].Lease {
		t.Fatalf("restored events: %v, %v", resp, err)
	}
}
