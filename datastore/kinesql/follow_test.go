package kinesql_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/test/rig"
)

// Follow reads kine's table while a real kine writes it: the changes after a revision,
// laid over the state there, are exactly what kine serves at the last revision read.
// A compaction past the start is ErrCompacted, before and while following.
func TestSQLiteFollowAgainstKine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	k := rig.StartKine(t, rig.SQLiteDSN(path))
	cli := rig.EtcdClient(t, k.Endpoint, nil)
	first := writeThroughKine(t, cli, 7, 50)
	src := sqliteSource(t, path)

	state := map[string][]byte{}
	for key, kv := range kineView(t, cli, first) {
		state[key] = kv.Value
	}
	last := writeThroughKine(t, cli, 8, 300)
	ctx, stop := context.WithCancel(ctxT(t, time.Minute))
	var upTo int64
	err := src.Follow(ctx, first, time.Second, func(changes []datastore.Change, to int64) error {
		for _, c := range changes {
			if c.KV.ModRevision <= upTo || c.KV.ModRevision > to {
				t.Errorf("change at revision %d outside (%d, %d]", c.KV.ModRevision, upTo, to)
			}
			if c.Delete {
				delete(state, string(c.KV.Key))
			} else {
				state[string(c.KV.Key)] = bytes.Clone(c.KV.Value)
				if c.KV.Lease != c.Lease.ID || (c.KV.Lease != 0 && c.Lease.TTL != c.KV.Lease) {
					t.Errorf("%s: lease %d with %+v", c.KV.Key, c.KV.Lease, c.Lease)
				}
			}
		}
		if upTo = to; upTo >= last {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || upTo < last {
		t.Fatalf("Follow: %v, up to %d of %d", err, upTo, last)
	}
	want := kineView(t, cli, last)
	if len(want) != len(state) {
		t.Errorf("followed state has %d keys, kine serves %d", len(state), len(want))
	}
	for key, kv := range want {
		if v, ok := state[key]; !ok || !bytes.Equal(v, kv.Value) {
			t.Errorf("%s: followed %q (present %v), kine serves %q", key, v, ok, kv.Value)
		}
	}

	// kine compacts by moving its compact_rev_key row; do what it does, with kine stopped.
	k.Stop()
	db := kinesql.OpenDBForTest(kinesql.Config{Dialect: kinesql.SQLite, Path: path, BusyTimeout: 5 * time.Second})
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
		VALUES ('compact_rev_key', 0, 0, 0, ?, 0, x'', x'')`, last); err != nil {
		t.Fatal(err)
	}
	if err := src.CheckFollow(ctxT(t, time.Minute), first); !errors.Is(err, datastore.ErrCompacted) {
		t.Fatalf("CheckFollow from before the compaction: %v", err)
	}
	err = src.Follow(ctxT(t, time.Minute), first, time.Second, func([]datastore.Change, int64) error { return nil })
	if !errors.Is(err, datastore.ErrCompacted) {
		t.Fatalf("Follow from before the compaction: %v", err)
	}
}
