package kinesql_test

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/test/rig"
)

// server is a SQL server of the rig and the URLs vcsnap and kine use for a database on it.
type server struct {
	kind     string
	password string
	url      func(db string) string // vcsnap's URL, without the password
	kineDSN  func(db string) string // kine's DSN, with it
	badPort  string                 // a URL to a port where nothing listens
}

func startServer(t *testing.T, kind string) (*rig.Datastore, server) {
	t.Helper()
	ds := rig.StartDatastore(t, kind)
	switch kind {
	case rig.KindPostgres:
		p := ds.Postgres
		return ds, server{kind: kind, password: p.Password,
			url: func(db string) string {
				return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", p.User, p.Host, p.Port, db)
			},
			kineDSN: func(db string) string {
				return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", p.User, p.Password, p.Host, p.Port, db)
			},
			badPort: fmt.Sprintf("postgres://%s@127.0.0.1:%d/x?sslmode=disable", p.User, rig.FreePort(t)),
		}
	default:
		m := ds.MariaDB
		return ds, server{kind: kind, password: m.Password,
			url: func(db string) string { return fmt.Sprintf("mysql://%s@tcp(%s:%d)/%s", m.User, m.Host, m.Port, db) },
			kineDSN: func(db string) string {
				return fmt.Sprintf("mysql://%s:%s@tcp(%s:%d)/%s", m.User, m.Password, m.Host, m.Port, db)
			},
			badPort: fmt.Sprintf("mysql://%s@tcp(127.0.0.1:%d)/x", m.User, rig.FreePort(t)),
		}
	}
}

func (s server) config(t *testing.T, db, password string) kinesql.Config {
	t.Helper()
	c, err := kinesql.ParseURL(s.url(db), password)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rawDB(t *testing.T, s server, db string) *sql.DB {
	t.Helper()
	d := kinesql.OpenDBForTest(s.config(t, db, s.password))
	t.Cleanup(func() { d.Close() })
	return d
}

// TestServerSourceAndTarget: for PostgreSQL and MariaDB, kine writes history; the
// Source reads it while kine runs and matches kine's own view; the target restores it
// into another database (created on the way) where a real kine serves it; a non-empty
// target is refused without Force; a restore failing midway leaves the table as it was;
// wrong credentials and an unreachable server get clear errors.
func TestServerSourceAndTarget(t *testing.T) {
	for _, kind := range []string{rig.KindPostgres, rig.KindMySQL} {
		t.Run(kind, func(t *testing.T) {
			ds, srv := startServer(t, kind)
			cli := ds.Client(t)
			writeThroughKine(t, cli, 3, 300)
			dbName := "vcsnap"

			ctx := ctxT(t, 5*time.Minute)
			src, err := kinesql.OpenSource(ctx, srv.config(t, dbName, srv.password))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			c := newCollector(t)
			start := time.Now()
			rev, err := src.Read(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("read %d keys at revision %d in %v (kine running)", len(c.kvs), rev, time.Since(start))
			sameAsKine(t, c, kineView(t, cli, rev))
			ds.StopKine()

			// Restore into a database that does not exist yet.
			tc := srv.config(t, "restored", srv.password)
			tg, err := kinesql.OpenServerTarget(ctx, tc)
			if err != nil {
				t.Fatal(err)
			}
			const bump = 500
			_, final := restoreInto(t, tg, c, datastore.PrepareOptions{SnapshotRevision: rev, BumpRevision: bump})
			tg.Close()
			t.Run("kine serves the restored table", func(t *testing.T) {
				checkRestoredKine(t, srv.kineDSN("restored"), c, rev, bump, final)
			})

			// Non-empty: refused without Force.
			tg, _ = kinesql.OpenServerTarget(ctx, tc)
			if _, err := tg.Prepare(ctx, datastore.PrepareOptions{SnapshotRevision: rev, BumpRevision: bump}); !errors.Is(err, datastore.ErrTargetNotEmpty) {
				t.Fatalf("non-empty target without force: %v", err)
			} else {
				t.Log(err)
			}
			tg.Close()

			// A restore that fails midway (a key the table cannot hold) rolls back: the
			// table keeps its rows.
			count := func() (n int64) {
				if err := rawDB(t, srv, "restored").QueryRowContext(ctx, `SELECT COUNT(*) FROM kine`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			before := count()
			tg, _ = kinesql.OpenServerTarget(ctx, tc)
			if _, err := tg.Prepare(ctx, datastore.PrepareOptions{Force: true, SnapshotRevision: rev, BumpRevision: bump}); err != nil {
				t.Fatal(err)
			}
			if err := tg.Begin(ctx); err != nil {
				t.Fatal(err)
			}
			for i := range c.kvs[:len(c.kvs)/2] {
				if c.kvs[i].Lease == 0 {
					if err := tg.Put(ctx, &c.kvs[i]); err != nil {
						t.Fatal(err)
					}
				}
			}
			bad := &datastore.KeyValue{Key: []byte("/registry/\xff\xfe"), Value: []byte("x"), ModRevision: 1, CreateRevision: 1, Version: 1}
			err = tg.Put(ctx, bad)
			if err == nil {
				_, err = tg.Commit(ctx)
			}
			if err == nil {
				t.Fatal("an invalid key was accepted")
			}
			t.Logf("failed midway: %v", err)
			if err := tg.Abort(ctx); err != nil {
				t.Fatal(err)
			}
			tg.Close()
			if after := count(); after != before {
				t.Fatalf("after an aborted restore the table has %d rows, before %d", after, before)
			}

			// Wrong password, unreachable server, missing password.
			for _, bc := range []struct {
				url, pw, want string
			}{
				{srv.url(dbName), "wrong-password", "wrong password"},
				{srv.badPort, srv.password, "cannot reach"},
			} {
				cfg, err := kinesql.ParseURL(bc.url, bc.pw)
				if err == nil {
					var s *kinesql.Source
					s, err = kinesql.OpenSource(ctx, cfg)
					if s != nil {
						s.Close()
					}
				}
				if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), bc.want) {
					t.Errorf("%s: %v, want %q", bc.want, err, bc.want)
				} else if strings.Contains(err.Error(), srv.password) || strings.Contains(err.Error(), "wrong-password") {
					t.Errorf("error shows the password: %v", err)
				} else {
					t.Log(err)
				}
			}
		})
	}
}
