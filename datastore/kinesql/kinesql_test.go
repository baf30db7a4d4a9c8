package kinesql_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	_ "modernc.org/sqlite"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/test/rig"
)

func TestMain(m *testing.M) {
	if p := os.Getenv("KINESQL_TEST_HOLD_LOCK"); p != "" {
		holdLock(p)
		return
	}
	code := m.Run()
	rig.CleanupBuilds()
	os.Exit(code)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// collector keeps what a Source emits, checking the Emitter contract on the way.
type collector struct {
	t      *testing.T
	leases map[int64]datastore.Lease
	kvs    []datastore.KeyValue
}

func newCollector(t *testing.T) *collector {
	return &collector{t: t, leases: map[int64]datastore.Lease{}}
}

func (c *collector) Lease(l datastore.Lease) error {
	if _, dup := c.leases[l.ID]; dup {
		c.t.Errorf("lease %d emitted twice", l.ID)
	}
	c.leases[l.ID] = l
	return nil
}

func (c *collector) Put(kv *datastore.KeyValue) error {
	if n := len(c.kvs); n > 0 && bytes.Compare(c.kvs[n-1].Key, kv.Key) >= 0 {
		c.t.Errorf("key %q after %q: not in ascending order", kv.Key, c.kvs[n-1].Key)
	}
	if kv.Lease != 0 {
		if _, ok := c.leases[kv.Lease]; !ok {
			c.t.Errorf("key %q uses lease %d before it was emitted", kv.Key, kv.Lease)
		}
	}
	cp := *kv
	cp.Key = append([]byte(nil), kv.Key...)
	cp.Value = append([]byte{}, kv.Value...)
	c.kvs = append(c.kvs, cp)
	return nil
}

func (c *collector) byKey() map[string]datastore.KeyValue {
	m := map[string]datastore.KeyValue{}
	for _, kv := range c.kvs {
		m[string(kv.Key)] = kv
	}
	return m
}

// writeThroughKine writes n keys with history through kine's etcd API: creates, updates,
// deletions (the apiserver's txn shape: kine has no plain delete), keys under leases,
// binary and empty values. It returns the revision after the last write.
func writeThroughKine(t *testing.T, cli *clientv3.Client, seed int64, n int) int64 {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	rng := rand.New(rand.NewSource(seed))
	var leases []clientv3.LeaseID
	for _, ttl := range []int64{300, 3600} {
		l, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l.ID)
	}
	var rev int64
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("/registry/%s/ns-%d/obj-%05d", []string{"pods", "configmaps", "secrets", "events"}[i%4], i%7, i)
		val := make([]byte, rng.Intn(2000))
		rng.Read(val)
		if i%50 == 0 {
			val = nil
		}
		var opts []clientv3.OpOption
		if i%4 == 3 {
			opts = append(opts, clientv3.WithLease(leases[(i/4)%len(leases)]))
		}
		resp, err := cli.Put(ctx, key, string(val), opts...)
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
		if i%3 == 0 {
			if resp, err = cli.Put(ctx, key, string(val)+"-v2", opts...); err != nil {
				t.Fatal(err)
			}
			rev = resp.Header.Revision
		}
		if i%5 == 0 {
			rev = deleteKine(t, cli, key)
		}
	}
	return rev
}

// deleteKine deletes a key the way the apiserver does (kine has no plain delete).
func deleteKine(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	g, err := cli.Get(ctx, key)
	if err != nil || len(g.Kvs) == 0 {
		t.Fatalf("get %s before delete: %v %v", key, g, err)
	}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", g.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("delete %s: %v %v", key, resp, err)
	}
	return resp.Header.Revision
}

// kineView lists every key through kine at a revision.
func kineView(t *testing.T, cli *clientv3.Client, rev int64) map[string]*datastore.KeyValue {
	t.Helper()
	resp, err := cli.Get(ctxT(t, time.Minute), "/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatalf("list through kine at %d: %v", rev, err)
	}
	m := map[string]*datastore.KeyValue{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = &datastore.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: kv.Lease}
	}
	return m
}

// sameAsKine compares what the Source emitted with kine's own view: keys, values, mod and
// create revisions, and leases (kine's lease is its TTL).
func sameAsKine(t *testing.T, got *collector, want map[string]*datastore.KeyValue) {
	t.Helper()
	g := got.byKey()
	if len(g) != len(want) {
		t.Errorf("emitted %d keys, kine serves %d", len(g), len(want))
	}
	for k, w := range want {
		kv, ok := g[k]
		if !ok {
			t.Errorf("key %q served by kine was not emitted", k)
			continue
		}
		if !bytes.Equal(kv.Value, w.Value) || kv.ModRevision != w.ModRevision || kv.CreateRevision != w.CreateRevision || kv.Lease != w.Lease {
			t.Errorf("key %q: emitted value %d bytes mod %d create %d lease %d; kine: %d bytes mod %d create %d lease %d",
				k, len(kv.Value), kv.ModRevision, kv.CreateRevision, kv.Lease, len(w.Value), w.ModRevision, w.CreateRevision, w.Lease)
		}
		if kv.Lease != 0 {
			if l := got.leases[kv.Lease]; l.TTL != kv.Lease || l.GrantedTTL != kv.Lease {
				t.Errorf("key %q: lease %+v, want ID = TTL = %d", k, l, kv.Lease)
			}
		}
	}
}

type fileState struct {
	sum   [32]byte
	mtime time.Time
	names []string
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	es, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return fileState{sum: sha256.Sum256(b), mtime: st.ModTime(), names: names}
}

func sqliteSource(t *testing.T, path string) *kinesql.Source {
	t.Helper()
	c, err := kinesql.ParseURL("sqlite://"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := kinesql.OpenSource(ctxT(t, time.Minute), c)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSQLiteSourceAgainstKine writes history through a real kine on SQLite, reads the
// file directly while kine runs (live WAL) and after it stopped (offline), and compares
// with what kine itself serves at the same revision. Offline reads leave the file's
// bytes, mtime and directory untouched.
func TestSQLiteSourceAgainstKine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	k := rig.StartKine(t, rig.SQLiteDSN(path))
	cli := rig.EtcdClient(t, k.Endpoint, nil)
	writeThroughKine(t, cli, 1, 400)

	src := sqliteSource(t, path)
	live := newCollector(t)
	rev, err := src.Read(ctxT(t, time.Minute), live)
	if err != nil {
		t.Fatalf("live read: %v", err)
	}
	want := kineView(t, cli, rev)
	sameAsKine(t, live, want)
	if n, err := src.Count(ctxT(t, time.Minute)); err != nil || n != int64(len(live.kvs)) {
		t.Errorf("Count = %d, %v; Read emitted %d", n, err, len(live.kvs))
	}
	if len(live.leases) != 2 {
		t.Errorf("leases %v, want the two TTLs 300 and 3600", live.leases)
	}
	t.Logf("live read: %d keys at revision %d", len(live.kvs), rev)

	// kine leaves its -wal (not checkpointed) and -shm behind when it stops: reading such
	// an offline database goes through SQLite's WAL read-only, changing neither the
	// database nor the WAL (the -shm is SQLite's shared-memory index, not data).
	src.Close()
	k.Stop()
	checkOffline(t, path, rev, want, path, path+"-wal")

	// A single-file copy (as VACUUM INTO or a checkpointed copy makes) is read as an
	// immutable file: no -wal or -shm appears next to it.
	cp := filepath.Join(t.TempDir(), "copy.db")
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`VACUUM INTO '` + cp + `'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	checkOffline(t, cp, rev, want, cp)
}

// checkOffline reads path twice and checks the result and that the files did not change
// and no file appeared in the directory.
func checkOffline(t *testing.T, path string, rev int64, want map[string]*datastore.KeyValue, files ...string) {
	t.Helper()
	var before []fileState
	for _, f := range files {
		before = append(before, stateOf(t, f))
	}
	for i := 0; i < 2; i++ {
		s := sqliteSource(t, path)
		off := newCollector(t)
		r2, err := s.Read(ctxT(t, time.Minute), off)
		if err != nil {
			t.Fatalf("offline read of %s: %v", path, err)
		}
		if r2 != rev {
			t.Errorf("offline revision %d, live %d", r2, rev)
		}
		sameAsKine(t, off, want)
		s.Close()
	}
	for i, f := range files {
		after := stateOf(t, f)
		b := before[i]
		if after.sum != b.sum || !after.mtime.Equal(b.mtime) || strings.Join(after.names, ",") != strings.Join(b.names, ",") {
			t.Errorf("reading changed %s: before %v %v %v, after %v %v %v", f, b.sum[:4], b.mtime, b.names, after.sum[:4], after.mtime, after.names)
		}
	}
	t.Logf("offline read of %s: %d files unchanged (%v)", filepath.Base(path), len(files), before[0].names)
}

// restoreInto writes what c collected into a target, as a restore does.
func restoreInto(t *testing.T, tg datastore.Target, c *collector, opts datastore.PrepareOptions) (datastore.TargetState, int64) {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	opts.Keys = int64(len(c.kvs))
	st, err := tg.Prepare(ctx, opts)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if err := tg.Begin(ctx); err != nil {
		t.Fatalf("begin: %v", err)
	}
	ids := make([]int64, 0, len(c.leases))
	for id := range c.leases {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if err := tg.Lease(ctx, c.leases[id]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.kvs {
		if err := tg.Put(ctx, &c.kvs[i]); err != nil {
			t.Fatalf("put: %v", err)
		}
	}
	rev, err := tg.Commit(ctx)
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	return st, rev
}

// checkRestoredKine starts kine on a restored database and checks it serves exactly the
// source's keys and values with leases, at a revision above snapshot + bump, with every
// older revision compacted, and that it accepts writes above it.
func checkRestoredKine(t *testing.T, dsn string, src *collector, snapRev, bump, finalRev int64) {
	t.Helper()
	k := rig.StartKine(t, dsn)
	cli := rig.EtcdClient(t, k.Endpoint, nil)
	ctx := ctxT(t, time.Minute)
	resp, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision < finalRev || finalRev <= snapRev+bump {
		t.Errorf("kine's revision %d, restore's %d: want both above snapshot %d + bump %d", resp.Header.Revision, finalRev, snapRev, bump)
	}
	got := map[string][]byte{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = kv.Value
		if kv.ModRevision <= snapRev+bump {
			t.Errorf("key %q at revision %d, not above snapshot + bump", kv.Key, kv.ModRevision)
		}
	}
	for _, kv := range src.kvs {
		v, ok := got[string(kv.Key)]
		if !ok || !bytes.Equal(v, kv.Value) {
			t.Errorf("key %q: restored %d bytes (present %v), want %d", kv.Key, len(v), ok, len(kv.Value))
		}
		delete(got, string(kv.Key))
	}
	for k := range got {
		if k != "/registry/health" { // kine writes it when it starts
			t.Errorf("unexpected key %q after the restore", k)
		}
	}
	// Leases: kine serves its TTL as the lease.
	for _, kv := range src.kvs {
		if kv.Lease == 0 {
			continue
		}
		r, err := cli.Get(ctx, string(kv.Key))
		if err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease != src.leases[kv.Lease].TTL {
			t.Errorf("key %q: lease after restore %v (%v), want TTL %d", kv.Key, r, err, src.leases[kv.Lease].TTL)
		}
		break
	}
	if _, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithRev(finalRev-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read below the final revision %d: %v, want compacted", finalRev, err)
	}
	p, err := cli.Put(ctx, "/registry/after-restore", "x")
	if err != nil || p.Header.Revision <= finalRev {
		t.Errorf("write after the restore: %v at revision %v, want above %d", err, p, finalRev)
	}
}

// TestSQLiteTargetKineStarts: a state.db written by the SQLite target is served by a real
// kine, and replacing an existing one keeps the old files for rollback.
func TestSQLiteTargetKineStarts(t *testing.T) {
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "src", "state.db")
	os.MkdirAll(filepath.Dir(srcPath), 0o755)
	k := rig.StartKine(t, rig.SQLiteDSN(srcPath))
	writeThroughKine(t, rig.EtcdClient(t, k.Endpoint, nil), 2, 300)
	k.Stop()
	c := newCollector(t)
	snapRev, err := sqliteSource(t, srcPath).Read(ctxT(t, time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}

	dstPath := filepath.Join(dir, "dst", "state.db")
	os.MkdirAll(filepath.Dir(dstPath), 0o755)
	cfg, _ := kinesql.ParseURL("sqlite://"+dstPath, "")
	tg, err := kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	const bump = 1000
	_, final := restoreInto(t, tg, c, datastore.PrepareOptions{SnapshotRevision: snapRev, BumpRevision: bump})
	tg.Close()
	checkRestoredKine(t, rig.SQLiteDSN(dstPath), c, snapRev, bump, final)
	// kine is stopped by now? No: StartKine's cleanup stops it at the end; stop it here
	// by running the next part in a subtest that needs the file free.
	t.Run("replace", func(t *testing.T) {
		// The previous kine is still running on dstPath: the target must refuse.
		tg, err := kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer tg.Close()
		_, err = tg.Prepare(ctxT(t, time.Minute), datastore.PrepareOptions{Force: true, SnapshotRevision: snapRev, BumpRevision: bump})
		if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), "stop the virtual cluster") {
			t.Fatalf("restore into a state.db kine has open: %v, want a refusal", err)
		}
		t.Log(err)
	})
}

// TestSQLiteReplaceKeepsOld: without --force a non-empty state.db is refused; with it,
// the old files are kept and the rollback command brings them back.
func TestSQLiteReplaceKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	c := newCollector(t)
	c.kvs = []datastore.KeyValue{{Key: []byte("/registry/a"), Value: []byte("1"), CreateRevision: 5, ModRevision: 7, Version: 2}}
	cfg, _ := kinesql.ParseURL("sqlite://"+path, "")
	tg, _ := kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
	_, rev1 := restoreInto(t, tg, c, datastore.PrepareOptions{SnapshotRevision: 10, BumpRevision: 100})
	tg.Close()
	if rev1 != 10+100+1+1 {
		t.Fatalf("revision %d, want 112 (rows from 111, mark at 112)", rev1)
	}
	old, _ := os.ReadFile(path)

	tg, _ = kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
	_, err := tg.Prepare(ctxT(t, time.Minute), datastore.PrepareOptions{SnapshotRevision: 10, BumpRevision: 100})
	if !errors.Is(err, datastore.ErrTargetNotEmpty) {
		t.Fatalf("non-empty target without force: %v", err)
	}
	tg.Close()
	c.kvs[0].Value = []byte("2")
	tg, _ = kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
	st, rev2 := restoreInto(t, tg, c, datastore.PrepareOptions{Force: true, SnapshotRevision: 10, BumpRevision: 100})
	if st.Keys != 1 || st.Revision != rev1 {
		t.Errorf("previous state %+v, want 1 key at %d", st, rev1)
	}
	if rev2 != rev1+100+2 {
		t.Errorf("revision %d, want above the previous %d + bump", rev2, rev1)
	}
	sqt := tg
	if len(sqt.Kept) != 1 {
		t.Fatalf("kept %v", sqt.Kept)
	}
	kept, _ := os.ReadFile(sqt.Kept[0])
	if !bytes.Equal(kept, old) {
		t.Fatal("the kept file is not the previous state.db")
	}
	tg.Close()
	if out, err := exec.Command("/bin/sh", "-c", kinesql.RollbackCommand(path, sqt.Stamp)).CombinedOutput(); err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	now, _ := os.ReadFile(path)
	if !bytes.Equal(now, old) {
		t.Fatal("the rollback command did not bring the previous state.db back")
	}
}

// TestSQLiteBadInput: every wrong input gets an error naming the problem, and the source
// file is not modified.
func TestSQLiteBadInput(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t, time.Minute)
	open := func(path string) error {
		c, err := kinesql.ParseURL("sqlite://"+path, "")
		if err != nil {
			return err
		}
		s, err := kinesql.OpenSource(ctx, c)
		if err == nil {
			_, err = s.Read(ctx, newCollector(t))
			s.Close()
		}
		return err
	}
	mk := func(name string, stmts ...string) string {
		p := filepath.Join(dir, name)
		db, err := sql.Open("sqlite", p)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, s := range stmts {
			if _, err := db.Exec(s); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("this is not a database, just text that is long enough"), 0o644)
	empty := filepath.Join(dir, "empty.db")
	os.WriteFile(empty, nil, 0o644)
	other := mk("other.db", `CREATE TABLE users (id INTEGER, name TEXT)`)
	unknown := mk("unknown.db", `CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER, deleted INTEGER,
		create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB, version INTEGER)`)
	cases := []struct {
		path string
		is   error
		want string
	}{
		{filepath.Join(dir, "missing.db"), datastore.ErrUnavailable, "does not exist"},
		{dir, nil, "is a directory"},
		{text, kinesql.ErrNotKine, "not a SQLite database"},
		{empty, kinesql.ErrNotKine, "empty file"},
		{other, kinesql.ErrNotKine, "no table named kine, its tables are users"},
		{unknown, kinesql.ErrUnknownSchema, "version"},
	}
	for _, c := range cases {
		var before fileState
		if st, err := os.Stat(c.path); err == nil && !st.IsDir() {
			before = stateOf(t, c.path)
		}
		err := open(c.path)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %v containing %q", filepath.Base(c.path), err, c.is, c.want)
			continue
		}
		t.Logf("%s: %v", filepath.Base(c.path), err)
		if before.names != nil {
			if after := stateOf(t, c.path); after.sum != before.sum || !after.mtime.Equal(before.mtime) {
				t.Errorf("%s was modified by the failed read", c.path)
			}
		}
	}

	t.Run("locked", func(t *testing.T) {
		// Another process holds an exclusive lock (a rollback-journal database mid-write).
		p := mk("locked.db", `PRAGMA journal_mode=DELETE`, `CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER, deleted INTEGER,
			create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB)`,
			`INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value) VALUES ('/a', 1, 0, 0, 0, 0, 'x')`)
		holder := exec.Command(os.Args[0], "-test.run=^$")
		holder.Env = append(os.Environ(), "KINESQL_TEST_HOLD_LOCK="+p)
		stdin, _ := holder.StdinPipe()
		stdout, _ := holder.StdoutPipe()
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); holder.Wait() }() //nolint:errcheck
		buf := make([]byte, 7)
		if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "locked\n" {
			t.Fatalf("lock holder: %q %v", buf, err)
		}
		c, _ := kinesql.ParseURL("sqlite://"+p+"?busy-timeout=300ms", "")
		start := time.Now()
		s, err := kinesql.OpenSource(ctx, c)
		if err == nil {
			_, err = s.Read(ctx, newCollector(t))
			s.Close()
		}
		if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), "locked by another process") {
			t.Fatalf("read of a locked database: %v", err)
		}
		t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	})
}

// TestParseURL covers the URL forms and that passwords never show.
func TestParseURL(t *testing.T) {
	c, err := kinesql.ParseURL("mysql://kine:s3cret@tcp(db.example:3306)/k3s", "")
	if err != nil || c.MySQL.Passwd != "s3cret" || c.MySQL.Addr != "db.example:3306" || c.MySQL.DBName != "k3s" || strings.Contains(c.Redacted, "s3cret") {
		t.Fatalf("mysql with password: %+v %v", c, err)
	}
	c, err = kinesql.ParseURL("mysql://kine@db.example:3306/", "fromfile")
	if err != nil || c.MySQL.Passwd != "fromfile" || c.MySQL.Addr != "db.example:3306" || c.MySQL.DBName != "kubernetes" {
		t.Fatalf("mysql host:port, password from file: %+v %v", c, err)
	}
	c, err = kinesql.ParseURL("postgres://kine:p%40ss@db.example:5432/K3S?sslmode=disable", "")
	if err != nil || c.Postgres.Password != "p@ss" || c.Postgres.Database != "k3s" || strings.Contains(c.Redacted, "p%40ss") {
		t.Fatalf("postgres: %+v %v", c, err)
	}
	c, err = kinesql.ParseURL("postgres://kine@db.example/?sslmode=disable", "pw")
	if err != nil || c.Postgres.Password != "pw" || c.Postgres.Database != "kubernetes" {
		t.Fatalf("postgres default db: %+v %v", c, err)
	}
	c, err = kinesql.ParseURL("sqlite:///data/state.db?_journal=WAL&cache=shared&busy-timeout=2s", "")
	if err != nil || c.Path != "/data/state.db" || c.BusyTimeout != 2*time.Second {
		t.Fatalf("sqlite: %+v %v", c, err)
	}
	if _, err := kinesql.ParseURL("sqlite:///data/state.db?bogus=1", ""); err == nil {
		t.Fatal("unknown option accepted")
	}
	if _, err := kinesql.ParseURL("mysql://u:topsecret@tcp(h:1)/d?badparam=%zz", ""); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("bad mysql DSN: %v", err)
	}
	_ = url.Values{}
}

// holdLock runs in a child process: it takes an exclusive lock on the database and holds
// it until its stdin closes.
func holdLock(path string) {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		panic(err)
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		panic(err)
	}
	if _, err := conn.ExecContext(context.Background(), `BEGIN EXCLUSIVE`); err != nil {
		panic(err)
	}
	os.Stdout.WriteString("locked\n")
	io.Copy(io.Discard, os.Stdin)                      //nolint:errcheck
	conn.ExecContext(context.Background(), `ROLLBACK`) //nolint:errcheck
}

// touchingEmitter changes the file's modification time in the middle of a read, as
// another process opening and writing it would.
type touchingEmitter struct {
	*collector
	path string
	n    int
}

func (e *touchingEmitter) Put(kv *datastore.KeyValue) error {
	if e.n++; e.n == 2 {
		if err := os.Chtimes(e.path, time.Now().Add(time.Hour), time.Now().Add(time.Hour)); err != nil {
			return err
		}
	}
	return e.collector.Put(kv)
}

// TestSQLiteOfflineChangedDuringRead: a file read as offline (immutable) that changes
// during the read is refused with ErrCompacted, which makes snapshot create read again.
func TestSQLiteOfflineChangedDuringRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	c := newCollector(t)
	for i := 0; i < 5; i++ {
		c.kvs = append(c.kvs, datastore.KeyValue{Key: []byte(fmt.Sprintf("/registry/k%d", i)), Value: []byte("v"), CreateRevision: 1, ModRevision: 1, Version: 1})
	}
	cfg, _ := kinesql.ParseURL("sqlite://"+path, "")
	tg, _ := kinesql.OpenSQLiteTarget(ctxT(t, time.Minute), cfg)
	restoreInto(t, tg, c, datastore.PrepareOptions{SnapshotRevision: 1, BumpRevision: 1})
	tg.Close()
	src := sqliteSource(t, path)
	_, err := src.Read(ctxT(t, time.Minute), &touchingEmitter{collector: newCollector(t), path: path})
	if !errors.Is(err, datastore.ErrCompacted) || !strings.Contains(err.Error(), "read it again") {
		t.Fatalf("read of a file changed during the read: %v", err)
	}
	t.Log(err)
	if _, err := src.Read(ctxT(t, time.Minute), newCollector(t)); err != nil {
		t.Fatalf("the next read: %v", err)
	}
}
