package migrate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/migrate"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/embedetcd"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// record is one key as a datastore holds it, for comparisons across kinds.
type record struct {
	value []byte
	ttl   int64 // the lease's TTL, 0 without
}

type dumper struct {
	leases map[int64]bundle.Lease
	keys   map[string]record
	rev    int64
}

func (d *dumper) Lease(l bundle.Lease) error { d.leases[l.ID] = l; return nil }
func (d *dumper) Put(kv *bundle.KeyValue) error {
	r := record{value: append([]byte{}, kv.Value...)}
	if kv.Lease != 0 {
		r.ttl = d.leases[kv.Lease].TTL
	}
	d.keys[string(kv.Key)] = r
	return nil
}

// dump reads any datastore URL through its Source.
func dump(t testing.TB, raw string) *dumper {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	src, err := open.Source(ctx, raw, open.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d := &dumper{leases: map[int64]bundle.Lease{}, keys: map[string]record{}}
	if d.rev, err = src.Read(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func sameKeys(t testing.TB, what string, want, got *dumper) {
	t.Helper()
	for k, w := range want.keys {
		g, ok := got.keys[k]
		if !ok || !bytes.Equal(g.value, w.value) {
			t.Errorf("%s: key %q: got %d bytes (present %v), want %d", what, k, len(g.value), ok, len(w.value))
			continue
		}
		// A lease keeps its TTL, or less when time passed (etcd counts it down).
		if (w.ttl == 0) != (g.ttl == 0) || g.ttl > w.ttl || g.ttl < w.ttl-60 {
			t.Errorf("%s: key %q: lease TTL %d, want %d", what, k, g.ttl, w.ttl)
		}
	}
	for k := range got.keys {
		if _, ok := want.keys[k]; !ok {
			t.Errorf("%s: unexpected key %q", what, k)
		}
	}
}

// sourceDB writes a kine SQLite database with n keys (some under leases) the way a
// restore would, as the starting point of the migrations.
func sourceDB(t testing.TB, path string, n, valueSize int) { sourceDBAt(t, path, n, valueSize, 40_000) }

// sourceDBAt is sourceDB with the keys written above a given revision (kine databases
// carry much more history than keys).
func sourceDBAt(t testing.TB, path string, n, valueSize int, rev int64) {
	t.Helper()
	ctx := ctxT(t, 10*time.Minute)
	tg, err := open.Target(ctx, "sqlite://"+path, open.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if _, err := tg.Prepare(ctx, datastore.PrepareOptions{SnapshotRevision: rev, BumpRevision: 1, Keys: int64(n)}); err != nil {
		t.Fatal(err)
	}
	if err := tg.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ttl := range []int64{60, 3600} {
		if err := tg.Lease(ctx, bundle.Lease{ID: ttl, TTL: ttl, GrantedTTL: ttl}); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewSource(1))
	val := make([]byte, valueSize)
	for i := 0; i < n; i++ {
		rng.Read(val)
		kv := bundle.KeyValue{Key: []byte(fmt.Sprintf("/registry/configmaps/ns-%02d/cm-%07d", i%20, i)), Value: val[:rng.Intn(valueSize+1)],
			CreateRevision: int64(i + 1), ModRevision: int64(i + 1), Version: 1}
		if i%10 == 0 {
			kv.Key = []byte(fmt.Sprintf("/registry/events/ns-%02d/ev-%07d", i%20, i))
			kv.Lease = 3600
		}
		if err := tg.Put(ctx, &kv); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tg.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateChain converts SQLite → etcd (online) → etcd data directory → SQLite, each
// step streaming, and checks every step holds the same keys, values and leases with the
// revision moving forward; the etcd data directory is also served by etcd v3.6.
func TestMigrateChain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	dir := t.TempDir()
	sqliteA := "sqlite://" + filepath.Join(dir, "a", "state.db")
	os.MkdirAll(filepath.Join(dir, "a"), 0o755)
	os.MkdirAll(filepath.Join(dir, "c"), 0o755)
	sourceDB(t, filepath.Join(dir, "a", "state.db"), 3000, 3000)
	want := dump(t, sqliteA)
	if len(want.keys) != 3000 {
		t.Fatalf("source has %d keys", len(want.keys))
	}

	ctx := ctxT(t, 10*time.Minute)
	e, cli := embedetcd.ForTest(t)
	r1, err := migrate.Migrate(ctx, migrate.Options{From: sqliteA, To: e.URL, BumpRevision: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sqlite → etcd: %+v", *r1)
	if r1.Keys != 3000 || r1.Leases != 1 || r1.Revision <= r1.SourceRevision+100 || r1.FromKind != "kine-sqlite" || r1.ToKind != "etcd" {
		t.Errorf("result %+v", r1)
	}
	sameKeys(t, "etcd", want, dump(t, e.URL))

	etcdDir := filepath.Join(dir, "b", "etcd")
	os.MkdirAll(filepath.Dir(etcdDir), 0o755)
	r2, err := migrate.Migrate(ctx, migrate.Options{From: e.URL, To: "etcd-dir://" + etcdDir, BumpRevision: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd → etcd-dir: %+v", *r2)
	if r2.Revision <= r1.Revision+100 {
		t.Errorf("etcd-dir revision %d not above the source's %d + bump", r2.Revision, r1.Revision)
	}
	sameKeys(t, "etcd-dir", want, dump(t, "etcd-dir://"+etcdDir))

	sqliteC := "sqlite://" + filepath.Join(dir, "c", "state.db")
	r3, err := migrate.Migrate(ctx, migrate.Options{From: "etcd-dir://" + etcdDir, To: sqliteC, BumpRevision: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd-dir → sqlite: %+v", *r3)
	if r3.Revision <= r2.Revision+100 {
		t.Errorf("sqlite revision %d not above the source's %d + bump", r3.Revision, r2.Revision)
	}
	sameKeys(t, "sqlite", want, dump(t, sqliteC))

	// etcd v3.6 (the embedded server) starts on the data directory too.
	e2, err := embedetcd.Start(etcdDir)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	cli2, err := clientv3.New(clientv3.Config{Endpoints: []string{e2.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	resp, err := cli2.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 3000 || resp.Header.Revision != r2.Revision {
		t.Fatalf("etcd v3.6 on the data directory: %v %v, want 3000 keys at %d", resp, err, r2.Revision)
	}
	_ = cli

	// Refusals: same datastore, non-empty target, unreachable target.
	if _, err := migrate.Migrate(ctx, migrate.Options{From: sqliteA, To: strings.Replace(sqliteA, "/a/", "/a//", 1) + "?busy-timeout=1s"}); err == nil || !strings.Contains(err.Error(), "same datastore") {
		t.Errorf("same datastore: %v", err)
	}
	if _, err := migrate.Migrate(ctx, migrate.Options{From: sqliteA, To: sqliteC}); !errors.Is(err, datastore.ErrTargetNotEmpty) {
		t.Errorf("non-empty target: %v", err)
	} else {
		t.Log(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "c", "state.db"))
	r4, err := migrate.Migrate(ctx, migrate.Options{From: sqliteA, To: sqliteC, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if r4.PreviousKeys != 3000 || r4.PreviousRevision != r3.Revision || r4.Revision <= r3.Revision {
		t.Errorf("force: %+v", r4)
	}
	kept, _ := filepath.Glob(filepath.Join(dir, "c", "state.db.vcsnap-old-*"))
	if len(kept) != 1 {
		t.Fatalf("kept %v", kept)
	}
	if old, _ := os.ReadFile(kept[0]); !bytes.Equal(old, before) {
		t.Error("the kept state.db is not the previous one")
	}
}

// TestMigrateSpeed measures a 100k-key SQLite database (1 KiB values on average) read
// straight from the file and converted into an etcd data directory and a new SQLite file.
func TestMigrateSpeed(t *testing.T) {
	benchmarks(t)
	const n = 100_000
	dir := t.TempDir()
	path := filepath.Join(dir, "src", "state.db")
	os.MkdirAll(filepath.Dir(path), 0o755)
	start := time.Now()
	sourceDB(t, path, n, 2048)
	t.Logf("wrote the %d-key source with the SQLite target in %v", n, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	d := dump(t, "sqlite://"+path)
	t.Logf("read %d keys straight from SQLite in %v", len(d.keys), time.Since(start).Round(time.Millisecond))

	ctx := ctxT(t, 10*time.Minute)
	for _, to := range []string{"etcd-dir://" + filepath.Join(dir, "etcd"), "sqlite://" + filepath.Join(dir, "state2.db")} {
		start = time.Now()
		r, err := migrate.Migrate(ctx, migrate.Options{From: "sqlite://" + path, To: to})
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		t.Logf("migrated %d keys (%d MiB of values) to %s in %v: %.0f keys/s", r.Keys, r.ValueBytes>>20, r.ToKind, took.Round(time.Millisecond), float64(r.Keys)/took.Seconds())
	}
}

// A forced migration interrupted while writing puts back the keys the target had, from
// the safety backup it took first.
func TestInterruptedForcedMigrationPutsTheTargetBack(t *testing.T) {
	src, srcCli := embedetcd.ForTest(t)
	dst, dstCli := embedetcd.ForTest(t)
	bctx := context.Background()
	for i := 0; i < 3000; i++ {
		if _, err := srcCli.Put(bctx, fmt.Sprintf("/registry/configmaps/ns/cm-%05d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dstCli.Put(bctx, "/registry/configmaps/old/keep-me", "old"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bctx)
	defer cancel()
	safety := "file://" + filepath.Join(t.TempDir(), "before-migration")
	_, err := migrate.Migrate(ctx, migrate.Options{From: src.URL, To: dst.URL, Force: true, SafetyBackup: safety,
		Progress: func(p snapshot.Progress) {
			if p.Keys >= 1024 {
				cancel()
			}
		}})
	var ae *restore.AbortError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ae) || !ae.PutBack {
		t.Fatalf("interrupted migration returned %v", err)
	}
	resp, err := dstCli.Get(bctx, "/registry/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "old" {
		t.Fatalf("after the undo the target holds %v, %v", resp, err)
	}
}
