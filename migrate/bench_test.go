package migrate_test

import (
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/migrate"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/rig"
)

// benchmarks run with VCSNAP_MIGRATE_BENCH=1 (they write 100k-key databases).
func benchmarks(t *testing.T) {
	t.Helper()
	rig.RequireIntegration(t)
	if os.Getenv("VCSNAP_MIGRATE_BENCH") != "1" {
		t.Skip("benchmark: set VCSNAP_MIGRATE_BENCH=1")
	}
}

// TestMigrateVsK3sStyle measures, on the same SQLite database and against the same etcd
// binary, vcsnap's migration and k3s's (pkg/etcd: list every key from kine's SQLite
// backend, then one Put per key: leases dropped, revisions restarted at 1). Keys default
// to 20000 (VCSNAP_MIGRATE_BENCH_KEYS), about 1 KiB of value each, source revision 3x the
// keys (kine keeps history).
func TestMigrateVsK3sStyle(t *testing.T) {
	benchmarks(t)
	n := 20_000
	if v := os.Getenv("VCSNAP_MIGRATE_BENCH_KEYS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "src", "state.db")
	os.MkdirAll(filepath.Dir(path), 0o755)
	sourceDBAt(t, path, n, 2048, int64(3*n))
	from := "sqlite://" + path
	ctx := ctxT(t, 30*time.Minute)

	// k3s's way.
	e1 := rig.StartEtcd(t)
	start := time.Now()
	c, _ := kinesql.ParseURL(from, "")
	src, err := kinesql.OpenSource(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	type kv struct{ k, v string }
	var all []kv
	list := &listEmitter{put: func(x *bundle.KeyValue) { all = append(all, kv{string(x.Key), string(x.Value)}) }}
	if _, err := src.Read(ctx, list); err != nil {
		t.Fatal(err)
	}
	src.Close()
	cli := e1.Client(t)
	for _, x := range all {
		if _, err := cli.Put(ctx, x.k, x.v); err != nil {
			t.Fatal(err)
		}
	}
	k3s := time.Since(start)
	r, _ := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	t.Logf("k3s-style (list, then one Put per key): %d keys in %v, revision %d (restarted), leases dropped", len(all), k3s.Round(time.Millisecond), r.Header.Revision)

	// vcsnap into a running etcd.
	e2 := rig.StartEtcd(t)
	u, _ := url.Parse(e2.Endpoint)
	start = time.Now()
	res, err := migrate.Migrate(ctx, migrate.Options{From: from, To: "etcd://" + u.Host})
	if err != nil {
		t.Fatal(err)
	}
	online := time.Since(start)
	t.Logf("vcsnap migrate to etcd://: %d keys, %d leases in %v, revision %d (source %d)", res.Keys, res.Leases, online.Round(time.Millisecond), res.Revision, res.SourceRevision)

	// vcsnap into an offline data directory, then etcd started on it.
	etcdDir := filepath.Join(dir, "data", "etcd")
	os.MkdirAll(filepath.Dir(etcdDir), 0o755)
	start = time.Now()
	res2, err := migrate.Migrate(ctx, migrate.Options{From: from, To: "etcd-dir://" + etcdDir})
	if err != nil {
		t.Fatal(err)
	}
	offline := time.Since(start)
	rig.StartEtcd(t, rig.WithEtcdDataDir(etcdDir), rig.WithEtcdName("default"))
	offlineServing := time.Since(start)
	t.Logf("vcsnap migrate to etcd-dir://: %d keys, %d leases in %v (%v until etcd serves it), revision %d", res2.Keys, res2.Leases,
		offline.Round(time.Millisecond), offlineServing.Round(time.Millisecond), res2.Revision)
	t.Logf("RESULT keys=%d k3s=%.2fs vcsnap-online=%.2fs (%.1fx) vcsnap-etcd-dir=%.2fs (%.1fx; %.1fx with the etcd start)",
		n, k3s.Seconds(), online.Seconds(), k3s.Seconds()/online.Seconds(), offline.Seconds(), k3s.Seconds()/offline.Seconds(),
		k3s.Seconds()/offlineServing.Seconds())
}

type listEmitter struct{ put func(*bundle.KeyValue) }

func (l *listEmitter) Lease(bundle.Lease) error      { return nil }
func (l *listEmitter) Put(kv *bundle.KeyValue) error { l.put(kv); return nil }

// TestSQLiteDirectVsKineAPI reads the same 100k-key SQLite database (1 KiB values on
// average) straight from the file and through kine's etcd API (paged, as the etcd v3
// source reads any etcd).
func TestSQLiteDirectVsKineAPI(t *testing.T) {
	benchmarks(t)
	const n = 100_000
	path := filepath.Join(t.TempDir(), "state.db")
	sourceDBAt(t, path, n, 2048, 3*n)
	ctx := ctxT(t, 30*time.Minute)
	count := &countEmitter{}
	start := time.Now()
	src, err := open.Source(ctx, "sqlite://"+path, open.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Read(ctx, count); err != nil {
		t.Fatal(err)
	}
	src.Close()
	direct := time.Since(start)
	t.Logf("direct: %d keys in %v", count.n, direct.Round(time.Millisecond))

	k := rig.StartKine(t, rig.SQLiteDSN(path))
	u, _ := url.Parse(k.Endpoint)
	count = &countEmitter{}
	start = time.Now()
	src, err = open.Source(ctx, "etcd://"+u.Host, open.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Read(ctx, count); err != nil {
		t.Fatal(err)
	}
	src.Close()
	api := time.Since(start)
	t.Logf("RESULT keys=%d direct=%.2fs kine-api=%.2fs (%.0fx)", count.n, direct.Seconds(), api.Seconds(), api.Seconds()/direct.Seconds())
}

type countEmitter struct{ n int }

func (c *countEmitter) Lease(bundle.Lease) error   { return nil }
func (c *countEmitter) Put(*bundle.KeyValue) error { c.n++; return nil }
