package etcddir_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcddir"
	"github.com/vcsnap/vcsnap/test/rig"
)

func TestMain(m *testing.M) {
	code := m.Run()
	rig.CleanupBuilds()
	os.Exit(code)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type collector struct {
	leases map[int64]datastore.Lease
	kvs    []datastore.KeyValue
}

func (c *collector) Lease(l datastore.Lease) error { c.leases[l.ID] = l; return nil }
func (c *collector) Put(kv *datastore.KeyValue) error {
	cp := *kv
	cp.Key = append([]byte(nil), kv.Key...)
	cp.Value = append([]byte{}, kv.Value...)
	c.kvs = append(c.kvs, cp)
	return nil
}

// sample is a bundle's worth of keys: as a kine source emits them (lease ID = TTL) and
// as an etcd source does (random lease IDs, remaining TTL below the granted one), with
// binary and empty values.
func sample(n int) *collector {
	c := &collector{leases: map[int64]datastore.Lease{
		3600:               {ID: 3600, TTL: 3600, GrantedTTL: 3600},
		0x694d9a1b2c3d4e5f: {ID: 0x694d9a1b2c3d4e5f, TTL: 250, GrantedTTL: 600},
	}}
	for i := 0; i < n; i++ {
		kv := datastore.KeyValue{Key: []byte(fmt.Sprintf("/registry/configmaps/ns-%d/cm-%05d", i%5, i)),
			Value: bytes.Repeat([]byte{byte(i)}, i%3000), CreateRevision: int64(10 + i), ModRevision: int64(20 + 2*i), Version: int64(1 + i%4)}
		switch i % 10 {
		case 3:
			kv.Lease = 3600
		case 7:
			kv.Lease = 0x694d9a1b2c3d4e5f
		}
		c.kvs = append(c.kvs, kv)
	}
	sort.Slice(c.kvs, func(i, j int) bool { return bytes.Compare(c.kvs[i].Key, c.kvs[j].Key) < 0 })
	return c
}

func restore(t *testing.T, raw string, c *collector, opts datastore.PrepareOptions) (*etcddir.Target, datastore.TargetState, int64, error) {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	cfg, err := etcddir.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := etcddir.OpenTarget(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	opts.Keys = int64(len(c.kvs))
	st, err := tg.Prepare(ctx, opts)
	if err != nil {
		return tg, st, 0, err
	}
	if err := tg.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range c.leases {
		if err := tg.Lease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.kvs {
		if err := tg.Put(ctx, &c.kvs[i]); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := tg.Commit(ctx)
	return tg, st, rev, err
}

// checkServed checks a running etcd serves exactly c's keys at revisions above the floor,
// with leases re-armed at their remaining TTLs, everything older compacted, and that it
// takes writes above the final revision.
func checkServed(t *testing.T, cli *clientv3.Client, c *collector, floor, final int64) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision != final {
		t.Errorf("etcd's revision %d, restore said %d", resp.Header.Revision, final)
	}
	if len(resp.Kvs) != len(c.kvs) {
		t.Fatalf("etcd serves %d keys, want %d", len(resp.Kvs), len(c.kvs))
	}
	for i, kv := range resp.Kvs {
		w := c.kvs[i]
		if !bytes.Equal(kv.Key, w.Key) || !bytes.Equal(kv.Value, w.Value) || kv.ModRevision <= floor || kv.Version != w.Version {
			t.Fatalf("key %d: %q mod %d version %d (%d bytes), want %q above %d version %d (%d bytes)", i, kv.Key, kv.ModRevision, kv.Version,
				len(kv.Value), w.Key, floor, w.Version, len(w.Value))
		}
		if w.CreateRevision < kv.ModRevision && kv.CreateRevision != w.CreateRevision {
			t.Errorf("key %q: create revision %d, want the source's %d", kv.Key, kv.CreateRevision, w.CreateRevision)
		}
		if (kv.Lease != 0) != (w.Lease != 0) || (w.Lease != 0 && kv.Lease != w.Lease) {
			t.Errorf("key %q: lease %x, want %x", kv.Key, kv.Lease, w.Lease)
		}
	}
	for id, l := range c.leases {
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
		if err != nil {
			t.Fatal(err)
		}
		if ttl.GrantedTTL != l.GrantedTTL || ttl.TTL > l.TTL || ttl.TTL < l.TTL-30 {
			t.Errorf("lease %x: granted %d remaining %d, want granted %d remaining ~%d", id, ttl.GrantedTTL, ttl.TTL, l.GrantedTTL, l.TTL)
		}
	}
	if _, err := cli.Get(ctx, "/registry", clientv3.WithPrefix(), clientv3.WithRev(final-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read below the final revision: %v, want compacted", err)
	}
	p, err := cli.Put(ctx, "/registry/after", "x")
	if err != nil || p.Header.Revision != final+1 {
		t.Errorf("write after the restore: %v %v, want revision %d", p, err, final+1)
	}
}

// TestEtcdDirStartsWithEtcd35: the directory written for a vcluster-style member (name
// <vc>-0, an https peer URL that does not resolve here) is served by the etcd v3.5 binary,
// read back offline by the Source, refused when not empty, and replaced with --force
// keeping the old directory for the rollback command.
func TestEtcdDirStartsWithEtcd35(t *testing.T) {
	rig.RequireIntegration(t)
	dir := filepath.Join(t.TempDir(), "data", "etcd")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	raw := "etcd-dir://" + dir + "?vcluster=vc1&namespace=team-a"
	c := sample(3000)
	const snap, bump = 5000, 1000
	start := time.Now()
	_, st, final, err := restore(t, raw, c, datastore.PrepareOptions{SnapshotRevision: snap, BumpRevision: bump})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d keys into %s in %v, revision %d (previous %+v)", len(c.kvs), dir, time.Since(start), final, st)
	if final != snap+bump+int64(len(c.kvs))+1 {
		t.Errorf("final revision %d, want snapshot + bump + keys + 1 = %d", final, snap+bump+int64(len(c.kvs))+1)
	}
	e := rig.StartEtcd(t, rig.WithEtcdDataDir(dir), rig.WithEtcdName("vc1-0"))
	cli := e.Client(t)
	checkServed(t, cli, c, snap+bump, final)
	mem, err := cli.MemberList(ctxT(t, time.Minute))
	if err != nil || len(mem.Members) != 1 || mem.Members[0].Name != "vc1-0" || mem.Members[0].PeerURLs[0] != "https://vc1-0.vc1-headless.team-a:2380" {
		t.Errorf("members %v %v", mem, err)
	}
	e.Stop()

	// The Source reads the directory back offline.
	cfg, _ := etcddir.ParseURL(raw)
	src, err := etcddir.OpenSource(ctxT(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	back := &collector{leases: map[int64]datastore.Lease{}}
	rev, err := src.Read(ctxT(t, time.Minute), back)
	src.Close()
	if err != nil || rev < final+1 || len(back.kvs) != len(c.kvs)+1 {
		t.Fatalf("read back: %d keys at %d, %v", len(back.kvs), rev, err)
	}

	// Not empty: refused without --force.
	if _, _, _, err := restore(t, raw, c, datastore.PrepareOptions{SnapshotRevision: snap, BumpRevision: bump}); !errors.Is(err, datastore.ErrTargetNotEmpty) {
		t.Fatalf("non-empty target without force: %v", err)
	} else {
		t.Log(err)
	}
	// With --force: the previous revision counts, and the old directory is kept.
	tg, st, final2, err := restore(t, raw, c, datastore.PrepareOptions{Force: true, SnapshotRevision: snap, BumpRevision: bump})
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != rev || st.Keys != int64(len(c.kvs)+1) || final2 <= rev+bump {
		t.Errorf("previous state %+v (want revision %d), final %d", st, rev, final2)
	}
	if tg.Kept == "" {
		t.Fatal("old directory not kept")
	}
	out, err := exec.Command("/bin/sh", "-c", etcddir.RollbackCommand(dir, tg.Stamp)).CombinedOutput()
	if err != nil {
		t.Fatalf("rollback: %v %s", err, out)
	}
	e = rig.StartEtcd(t, rig.WithEtcdDataDir(dir), rig.WithEtcdName("vc1-0"))
	if r, err := e.Client(t).Get(ctxT(t, time.Minute), "/registry/after"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("after rollback the old data is back: %v %v", r, err)
	}
	// A running etcd's directory is refused.
	if _, _, _, err := restore(t, raw, c, datastore.PrepareOptions{Force: true, SnapshotRevision: snap}); err == nil || !strings.Contains(err.Error(), "running etcd") {
		t.Fatalf("restore into a running etcd's directory: %v", err)
	} else {
		t.Log(err)
	}
}

// TestEtcdDirDefaults: URL forms and defaults.
func TestEtcdDirDefaults(t *testing.T) {
	c, err := etcddir.ParseURL("etcd-dir:///data/etcd")
	if err != nil || c.Dir != "/data/etcd" || c.Name != "default" || c.PeerURL != "http://localhost:2380" || c.ClusterToken != "vcluster" {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = etcddir.ParseURL("etcd-dir:///data/etcd?vcluster=my-vc&namespace=ns1&cluster-token=tok")
	if err != nil || c.Name != "my-vc-0" || c.PeerURL != "https://my-vc-0.my-vc-headless.ns1:2380" || c.ClusterToken != "tok" {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"etcd-dir://", "etcd-dir:///data/etcd?peer-url=nope", "etcd-dir:///data/etcd?x=1", "etcd-dir:///"} {
		if _, err := etcddir.ParseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
