package etcdv3_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/test/embedetcd"
)

// Follow against a real (embedded) etcd: every put with its revisions and lease, every
// delete, in order; an idle prefix still reports progress when other keys move the
// revision; a compacted start revision is ErrCompacted, before and while following.
func TestFollow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, cli := embedetcd.ForTest(t)
	src, err := etcdv3.OpenSource(ctx, etcdv3.Config{Endpoints: []string{e.Endpoint}, Prefix: "/registry/"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	start, err := src.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(ctx, 300)
	if err != nil {
		t.Fatal(err)
	}
	mustPut := func(k, v string, opts ...clientv3.OpOption) int64 {
		r, err := cli.Put(ctx, k, v, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	r1 := mustPut("/registry/a", "1")
	mustPut("/registry/b", "2", clientv3.WithLease(lease.ID))
	mustPut("/registry/a", "3")
	d, err := cli.Delete(ctx, "/registry/a")
	if err != nil {
		t.Fatal(err)
	}
	outside := mustPut("/other", "x") // moves the revision, not the prefix

	var got []string
	var upTo int64
	fctx, stop := context.WithCancel(ctx)
	err = src.Follow(fctx, start, 100*time.Millisecond, func(changes []datastore.Change, to int64) error {
		for _, c := range changes {
			switch {
			case c.Delete:
				got = append(got, fmt.Sprintf("del %s@%d", c.KV.Key, c.KV.ModRevision))
			default:
				got = append(got, fmt.Sprintf("put %s=%s@%d/%d v%d lease=%t ttl=%t", c.KV.Key, c.KV.Value, c.KV.ModRevision,
					c.KV.CreateRevision, c.KV.Version, c.KV.Lease == int64(lease.ID), c.Lease.TTL > 250))
			}
		}
		if upTo = to; upTo >= outside {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow: %v", err)
	}
	want := []string{
		fmt.Sprintf("put /registry/a=1@%d/%d v1 lease=false ttl=false", r1, r1),
		fmt.Sprintf("put /registry/b=2@%d/%d v1 lease=true ttl=true", r1+1, r1+1),
		fmt.Sprintf("put /registry/a=3@%d/%d v2 lease=false ttl=false", r1+2, r1),
		fmt.Sprintf("del /registry/a@%d", d.Header.Revision),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if upTo < outside {
		t.Fatalf("progress reached %d, want %d (a write outside the prefix)", upTo, outside)
	}

	if _, err := cli.Compact(ctx, outside); err != nil {
		t.Fatal(err)
	}
	if err := src.CheckFollow(ctx, start); !errors.Is(err, datastore.ErrCompacted) {
		t.Fatalf("CheckFollow from a compacted revision: %v", err)
	}
	if err := src.CheckFollow(ctx, outside); err != nil {
		t.Fatalf("CheckFollow from the compaction's revision: %v", err)
	}
	err = src.Follow(ctx, start, time.Second, func([]datastore.Change, int64) error { return nil })
	if !errors.Is(err, datastore.ErrCompacted) {
		t.Fatalf("Follow from a compacted revision: %v", err)
	}
}
