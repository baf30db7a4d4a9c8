package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/test/rig"
)

// migEndpoint is a datastore as `vcsnap migrate` names it, and how to serve it afterwards.
type migEndpoint struct {
	url string
	// password of a SQL server ("" otherwise), given to vcsnap in a password file.
	password string
	// serve starts what a control plane needs on the datastore (etcd on a data directory,
	// kine on a SQL database) and returns the etcd v3 endpoint for kube-apiserver.
	serve func(t *testing.T) string
}

// migSource fills a virtual cluster of the kind through a real kube-apiserver, dumps
// every object, and stops the control plane (apiserver, and kine for the SQL kinds) as a
// migration requires. The datastore itself stays.
func migSource(t *testing.T, kind string, seed int64) (*rig.Virtual, migEndpoint, map[string][]byte) {
	t.Helper()
	v := rig.StartVirtual(t, kind)
	res := rig.FillRealistic(t, v.RESTConfig(), seed)
	want := rig.DumpAll(t, v.RESTConfig())
	t.Logf("%s source: %d API requests, %d objects", kind, res.Requests, len(want))
	v.StopAPIServer()
	ds := v.Datastore
	ds.StopKine()
	var ep migEndpoint
	switch kind {
	case rig.KindSQLite:
		ep.url = "sqlite://" + ds.SQLitePath
	case rig.KindPostgres:
		p := ds.Postgres
		ep.url, ep.password = fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", p.User, p.Host, p.Port, p.Database), p.Password
	case rig.KindMySQL:
		m := ds.MariaDB
		ep.url, ep.password = fmt.Sprintf("mysql://%s@tcp(%s:%d)/%s", m.User, m.Host, m.Port, m.Database), m.Password
	case rig.KindEtcd:
		u, _ := url.Parse(ds.EtcdEndpoint)
		ep.url = "etcd://" + u.Host
	}
	return v, ep, want
}

// migTarget is a fresh, empty datastore of the kind.
func migTarget(t *testing.T, kind string) migEndpoint {
	t.Helper()
	switch kind {
	case "etcd":
		e := rig.StartEtcd(t)
		u, _ := url.Parse(e.Endpoint)
		return migEndpoint{url: "etcd://" + u.Host, serve: func(*testing.T) string { return e.Endpoint }}
	case "etcd-dir":
		// As vcluster lays out its embedded etcd: /data/etcd, member <name>-0.
		dir := filepath.Join(t.TempDir(), "data", "etcd")
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		return migEndpoint{url: "etcd-dir://" + dir + "?vcluster=vc1&namespace=team-a", serve: func(t *testing.T) string {
			return rig.StartEtcd(t, rig.WithEtcdDataDir(dir), rig.WithEtcdName("vc1-0")).Endpoint
		}}
	case rig.KindSQLite:
		path := filepath.Join(t.TempDir(), "state.db")
		return migEndpoint{url: "sqlite://" + path, serve: func(t *testing.T) string {
			return rig.StartKine(t, rig.SQLiteDSN(path)).Endpoint
		}}
	case rig.KindPostgres:
		p := rig.StartPostgres(t)
		// A database that does not exist yet: the target creates it, as kine would.
		return migEndpoint{url: fmt.Sprintf("postgres://%s@%s:%d/migrated?sslmode=disable", p.User, p.Host, p.Port), password: p.Password,
			serve: func(t *testing.T) string {
				return rig.StartKine(t, fmt.Sprintf("postgres://%s:%s@%s:%d/migrated?sslmode=disable", p.User, p.Password, p.Host, p.Port)).Endpoint
			}}
	case rig.KindMySQL:
		m := rig.StartMariaDB(t)
		return migEndpoint{url: fmt.Sprintf("mysql://%s@tcp(%s:%d)/migrated", m.User, m.Host, m.Port), password: m.Password,
			serve: func(t *testing.T) string {
				return rig.StartKine(t, fmt.Sprintf("mysql://%s:%s@tcp(%s:%d)/migrated", m.User, m.Password, m.Host, m.Port)).Endpoint
			}}
	}
	t.Fatalf("unknown target kind %q", kind)
	return migEndpoint{}
}

// migPasswordFile writes a password into a file only the test can read.
func migPasswordFile(t *testing.T, pw string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type migResult struct {
	FromKind         string `json:"fromKind"`
	ToKind           string `json:"toKind"`
	SourceRevision   int64  `json:"sourceRevision"`
	Keys             int64  `json:"keys"`
	Leases           int64  `json:"leases"`
	PreviousRevision int64  `json:"previousRevision"`
	Revision         int64  `json:"revision"`
}

// migrateAndCompare runs `vcsnap migrate` from src to a new target of the kind, starts a
// kube-apiserver on the result and compares every object with the source's dump.
func migrateAndCompare(t *testing.T, cli *vcsnapCLI, v *rig.Virtual, src migEndpoint, want map[string][]byte, kind string) {
	t.Helper()
	dst := migTarget(t, kind)
	args := []string{"migrate", "--from", src.url, "--to", dst.url}
	if src.password != "" {
		args = append(args, "--from-password-file", migPasswordFile(t, src.password))
	}
	if dst.password != "" {
		args = append(args, "--to-password-file", migPasswordFile(t, dst.password))
	}
	var r migResult
	res := cli.mustJSON(t, &r, args...)
	for _, pw := range []string{src.password, dst.password} {
		if pw != "" && (strings.Contains(res.Stdout, pw) || strings.Contains(res.Stderr, pw)) {
			t.Fatalf("vcsnap printed a password:\n%s", res)
		}
	}
	t.Logf("migrated %d keys, %d leases from %s (revision %d) to %s in %v: revision %d",
		r.Keys, r.Leases, r.FromKind, r.SourceRevision, r.ToKind, res.Took.Round(time.Millisecond), r.Revision)
	if r.Revision <= r.SourceRevision || r.Keys == 0 || r.Leases == 0 {
		t.Errorf("result %+v: want keys, leases (events), and the revision above the source's", r)
	}
	endpoint := dst.serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ec := rig.EtcdClient(t, endpoint, nil)
	if g, err := ec.Get(ctx, "/registry/namespaces/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || g.Header.Revision < r.Revision {
		t.Errorf("the served datastore is at revision %v (%v), want at least %d", g, err, r.Revision)
	}
	v.StartAPIServerOn(t, endpoint)
	got := rig.DumpAll(t, v.RESTConfig())
	if diff := rig.DiffDumps(want, got); diff != "" {
		t.Fatalf("objects after migrating %s to %s differ:\n%s", r.FromKind, kind, diff)
	}
	t.Logf("kube-apiserver on the %s target serves all %d objects unchanged", kind, len(got))
	v.StopAPIServer()
}

// bundleAndCompare goes through a bundle instead: `vcsnap snapshot create` reads the
// source directly (its password from --datastore-password-file, or from
// $VCSNAP_DATASTORE_PASSWORD with viaEnv), `vcsnap restore` writes a target of the kind,
// and a kube-apiserver on it serves every object unchanged.
func bundleAndCompare(t *testing.T, cli *vcsnapCLI, v *rig.Virtual, src migEndpoint, want map[string][]byte, kind string, viaEnv bool) {
	t.Helper()
	bundle := "file://" + filepath.Join(t.TempDir(), "bundle")
	args := []string{"snapshot", "create", "--datastore", src.url}
	c := cli
	if viaEnv {
		c = &vcsnapCLI{env: append(append([]string{}, cli.env...), "VCSNAP_DATASTORE_PASSWORD="+src.password)}
	} else {
		args = append(args, "--datastore-password-file", migPasswordFile(t, src.password))
	}
	var created struct {
		Manifest struct {
			Revision int64 `json:"revision"`
			Keys     int64 `json:"keys"`
			Source   struct {
				Datastore string `json:"datastore"`
			} `json:"source"`
		} `json:"manifest"`
	}
	c.mustJSON(t, &created, append(args, bundle)...)
	dst := migTarget(t, kind)
	var restored struct {
		Revision int64 `json:"revision"`
	}
	c.mustJSON(t, &restored, "restore", "--datastore", dst.url, bundle)
	t.Logf("bundle of %d keys from %s at revision %d restored into %s: revision %d",
		created.Manifest.Keys, created.Manifest.Source.Datastore, created.Manifest.Revision, kind, restored.Revision)
	if restored.Revision <= created.Manifest.Revision {
		t.Errorf("restored revision %d not above the snapshot's %d", restored.Revision, created.Manifest.Revision)
	}
	v.StartAPIServerOn(t, dst.serve(t))
	if diff := rig.DiffDumps(want, rig.DumpAll(t, v.RESTConfig())); diff != "" {
		t.Fatalf("objects after snapshot and restore into %s differ:\n%s", kind, diff)
	}
	v.StopAPIServer()
}

// credentialChecks: a password inside the URL (vcluster's dataSource form) works with a
// warning and is never printed; a wrong password fails with exit code 7 and a message
// naming the problem and the fix.
func credentialChecks(t *testing.T, cli *vcsnapCLI, p *rig.Postgres) {
	t.Helper()
	res := cli.run(t, "snapshot", "create", "--datastore", p.DataSource(), "file://"+filepath.Join(t.TempDir(), "b1"))
	if res.Code != 0 || !strings.Contains(res.Stderr, "contains a password") {
		t.Fatalf("password in the URL: want success with a warning:\n%s", res)
	}
	if strings.Contains(res.Stdout+res.Stderr, p.Password) {
		t.Fatalf("the password was printed:\n%s", res)
	}
	wrong := &vcsnapCLI{env: append(append([]string{}, cli.env...), "VCSNAP_DATASTORE_PASSWORD=not-"+p.Password)}
	res = wrong.run(t, "snapshot", "create", "--datastore", fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", p.User, p.Host, p.Port, p.Database),
		"file://"+filepath.Join(t.TempDir(), "b2"))
	if res.Code != 7 || !strings.Contains(res.Stderr, "wrong password") || strings.Contains(res.Stderr, p.Password) {
		t.Fatalf("wrong password: want exit 7 naming the problem, without the password:\n%s", res)
	}
	t.Logf("wrong password: %s", strings.TrimSpace(res.Stderr))
}

// TestMigrate converts virtual clusters filled by a real kube-apiserver on SQLite,
// PostgreSQL and MariaDB (each behind a real kine) into etcd (a running one and an offline
// embedded-etcd data directory) and into each other SQL kind, and etcd into SQLite; on each
// result a fresh kube-apiserver must serve every object exactly as before.
func TestMigrate(t *testing.T) {
	rig.RequireIntegration(t)
	cli := newCLI(t, nil)
	matrix := []struct {
		source  string
		targets []string
	}{
		{rig.KindSQLite, []string{"etcd-dir", "etcd", rig.KindPostgres, rig.KindMySQL}},
		{rig.KindPostgres, []string{"etcd-dir", "etcd", rig.KindSQLite, rig.KindMySQL}},
		{rig.KindMySQL, []string{"etcd-dir", "etcd", rig.KindSQLite, rig.KindPostgres}},
		{rig.KindEtcd, []string{rig.KindSQLite}},
	}
	for i, m := range matrix {
		t.Run(m.source, func(t *testing.T) {
			v, src, want := migSource(t, m.source, int64(500+i))
			for _, kind := range m.targets {
				t.Run("to-"+kind, func(t *testing.T) { migrateAndCompare(t, cli, v, src, want, kind) })
			}
			switch m.source {
			case rig.KindPostgres:
				t.Run("bundle-to-sqlite", func(t *testing.T) { bundleAndCompare(t, cli, v, src, want, rig.KindSQLite, false) })
				t.Run("credentials", func(t *testing.T) { credentialChecks(t, cli, v.Postgres) })
			case rig.KindMySQL:
				t.Run("bundle-to-etcd-dir", func(t *testing.T) { bundleAndCompare(t, cli, v, src, want, "etcd-dir", true) })
			}
		})
	}
}

// TestMigrateLiveSQLiteSnapshot: `vcsnap snapshot create` reads a SQLite datastore while a
// client keeps writing through kube-apiserver (kine running, WAL mode). The bundle, restored
// into etcd, holds exactly what kine itself serves at the bundle's revision.
func TestMigrateLiveSQLiteSnapshot(t *testing.T) {
	rig.RequireIntegration(t)
	cli := newCLI(t, nil)
	v := rig.StartVirtual(t, rig.KindSQLite)
	rig.FillRealistic(t, v.RESTConfig(), 77)
	kine := rig.EtcdClient(t, v.Datastore.Kine.Endpoint, nil)
	cs := kubernetes.NewForConfigOrDie(v.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "live"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The namespace reaches the apiserver's informers: a first object in it is accepted.
	for {
		_, err := cs.CoreV1().ConfigMaps("live").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "first"}}, metav1.CreateOptions{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the namespace never took an object: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The writer: creates and updates ConfigMaps as fast as the apiserver takes them.
	var writes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr atomic.Value
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("cm-%d-%d", w, i%50)
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "live"}, Data: map[string]string{"i": fmt.Sprint(i)}}
				_, err := cs.CoreV1().ConfigMaps("live").Create(ctx, cm, metav1.CreateOptions{})
				if err != nil {
					cur, gerr := cs.CoreV1().ConfigMaps("live").Get(ctx, name, metav1.GetOptions{})
					if gerr == nil {
						cur.Data = cm.Data
						_, err = cs.CoreV1().ConfigMaps("live").Update(ctx, cur, metav1.UpdateOptions{})
					}
				}
				if err != nil && ctx.Err() == nil {
					writeErr.Store(err)
				}
				writes.Add(1)
			}
		}(w)
	}
	revNow := func() int64 {
		r, err := kine.Get(ctx, "/registry/health")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	for writes.Load() < 100 {
		time.Sleep(50 * time.Millisecond)
	}
	before := revNow()
	bundleURL := "file://" + filepath.Join(t.TempDir(), "live-bundle")
	var created struct {
		Manifest struct {
			Revision int64 `json:"revision"`
			Keys     int64 `json:"keys"`
		} `json:"manifest"`
	}
	res := cli.mustJSON(t, &created, "snapshot", "create", "--datastore", "sqlite://"+v.SQLitePath, bundleURL)
	rev := created.Manifest.Revision
	// kine's own view at the bundle's revision, taken right away (kine compacts only
	// revisions more than 1000 behind, every 5 minutes).
	pinned, err := kine.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatalf("kine at revision %d: %v", rev, err)
	}
	mid := writes.Load()
	for writes.Load() < mid+50 {
		time.Sleep(50 * time.Millisecond)
	}
	after := revNow()
	close(stop)
	wg.Wait()
	if err, _ := writeErr.Load().(error); err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("snapshot of %d keys at revision %d in %v while writing (revision %d before, %d after; %d writes)",
		created.Manifest.Keys, rev, res.Took.Round(time.Millisecond), before, after, writes.Load())
	if !(before < rev && rev < after) {
		t.Fatalf("the snapshot's revision %d is not between %d and %d: it was not taken while the writer wrote", rev, before, after)
	}

	// Restore into a fresh etcd and compare key by key with kine at that revision.
	e := rig.StartEtcd(t)
	u, _ := url.Parse(e.Endpoint)
	cli.mustJSON(t, &struct{}{}, "restore", "--datastore", "etcd://"+u.Host, bundleURL)
	restored, err := e.Client(t).Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, kv := range restored.Kvs {
		got[string(kv.Key)] = kv.Value
	}
	if len(got) != len(pinned.Kvs) {
		t.Errorf("restored %d keys, kine serves %d at revision %d", len(got), len(pinned.Kvs), rev)
	}
	for _, kv := range pinned.Kvs {
		if g, ok := got[string(kv.Key)]; !ok || !bytes.Equal(g, kv.Value) {
			t.Errorf("key %q: restored %d bytes (present %v), kine at %d has %d", kv.Key, len(g), ok, rev, len(kv.Value))
		}
	}
	live := 0
	for k := range got {
		if strings.HasPrefix(k, "/registry/configmaps/live/") {
			live++
		}
	}
	t.Logf("restored %d keys (%d written by the live writer) equal kine's view at revision %d", len(got), live, rev)
}
