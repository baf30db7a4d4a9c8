package etcdv3_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/test/embedetcd"
)

type collect struct{ keys [][]byte }

func (c *collect) Lease(datastore.Lease) error { return nil }
func (c *collect) Put(kv *datastore.KeyValue) error {
	c.keys = append(c.keys, bytes.Clone(kv.Key))
	return nil
}

// The source pages with ranges bounded by prefixes of the keys (so etcd does not count
// the whole rest of the store for every page): whatever the keys' shapes (long shared
// prefixes, dense clumps after sparse stretches, 0xff bytes, keys that are prefixes of
// others), every key comes out exactly once, in order, with and without a prefix.
func TestSourceReadsEveryKeyOnceInPages(t *testing.T) {
	ctx := context.Background()
	defer etcdv3.SetPageTargetBytes(2 << 10)() // pages of 16 keys
	e, cli := embedetcd.ForTest(t)
	rng := rand.New(rand.NewSource(3))
	var keys []string
	for i := range 1500 { // one dense clump under a long shared prefix
		keys = append(keys, fmt.Sprintf("/registry/events/ns-%03d/ev-%08x", i%7, rng.Uint32()))
	}
	for i := range 60 { // sparse stretches
		keys = append(keys, fmt.Sprintf("/registry/%c%c/x%d", 'a'+rng.Intn(26), 'a'+rng.Intn(26), i))
	}
	keys = append(keys, "/", "/registry", "/registry/", "/registry/events", "a", "\x01", "\xff", "\xff\xff", "\xff\xffz",
		"/registry/\xff", "/registry/\xff\xff/k", "/registry/events/ns-000", "/registry/events/ns-000/")
	for i := 0; i < len(keys); i += 100 {
		var ops []clientv3.Op
		for _, k := range keys[i:min(i+100, len(keys))] {
			ops = append(ops, clientv3.OpPut(k, "v"))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for _, prefix := range []string{"", "/registry/", "/registry/events/ns-003/", "\xff"} {
		t.Run(fmt.Sprintf("prefix %q", prefix), func(t *testing.T) {
			want, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithKeysOnly())
			if prefix != "" {
				want, err = cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
			}
			if err != nil {
				t.Fatal(err)
			}
			src, err := etcdv3.OpenSource(ctx, etcdv3.Config{Endpoints: []string{e.Endpoint}, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			var got collect
			if _, err := src.Read(ctx, &got); err != nil {
				t.Fatal(err)
			}
			if len(got.keys) != len(want.Kvs) {
				t.Fatalf("read %d keys, the store holds %d", len(got.keys), len(want.Kvs))
			}
			for i, kv := range want.Kvs {
				if !bytes.Equal(got.keys[i], kv.Key) {
					t.Fatalf("key %d: read %q, want %q", i, got.keys[i], kv.Key)
				}
			}
		})
	}
}
