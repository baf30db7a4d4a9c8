package etcdv3_test

import (
	"context"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
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
				kv := bundle.KeyValue{Key: []byte(fmt.Sprintf("/registry/k%d", i)), Value: []byte("v")}
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
			if final > want+3+16 {
				t.Errorf("final revision %d overshoots %d by more than the writers can", final, want)
			}
		})
	}
}
