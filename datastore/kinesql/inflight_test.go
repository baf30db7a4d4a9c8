package kinesql_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/test/rig"
)

// On PostgreSQL an insert in flight holds an id below rows committed after it. A full
// read taken then stops below that id (its revision is exactly the state it holds), and
// following from there delivers the row once it commits: nothing falls between.
func TestServerInsertInFlight(t *testing.T) {
	ds, srv := startServer(t, rig.KindPostgres)
	db := ds.Postgres.Database
	cli := ds.Client(t)
	ctx := ctxT(t, time.Minute)
	writeThroughKine(t, cli, 3, 20)
	raw := rawDB(t, srv, db)
	tx, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var inflight int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
		VALUES ('/registry/inflight', 1, 0, 0, 0, 0, 'v', '') RETURNING id`).Scan(&inflight); err != nil {
		t.Fatal(err)
	}
	later, err := cli.Put(ctx, "/registry/later", "w")
	if err != nil {
		t.Fatal(err)
	}
	if later.Header.Revision <= inflight {
		t.Fatalf("the later put got revision %d, not above the insert in flight %d", later.Header.Revision, inflight)
	}
	src, err := kinesql.OpenSource(ctx, srv.config(t, db, srv.password))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := newCollector(t)
	rev, err := src.Read(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if rev != inflight-1 {
		t.Fatalf("full read at revision %d with an insert in flight at %d (newest %d): want %d", rev, inflight, later.Header.Revision, inflight-1)
	}
	if _, ok := c.byKey()["/registry/later"]; ok {
		t.Fatal("the full read holds a key above its revision")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	fctx, stop := context.WithCancel(ctx)
	err = src.Follow(fctx, rev, time.Second, func(changes []datastore.Change, upTo int64) error {
		for _, ch := range changes {
			got[string(ch.KV.Key)] = true
		}
		if upTo >= later.Header.Revision {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || !got["/registry/inflight"] || !got["/registry/later"] {
		t.Fatalf("follow after the read: %v, changes %v", err, got)
	}
}
