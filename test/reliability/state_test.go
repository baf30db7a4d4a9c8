package reliability

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// state is a datastore's live keys and values.
type state map[string]string

// collector is a datastore.Emitter keeping every key.
type collector struct{ s state }

func (c *collector) Lease(bundle.Lease) error { return nil }
func (c *collector) Put(kv *bundle.KeyValue) error {
	c.s[string(kv.Key)] = string(kv.Value)
	return nil
}

// readState reads every live key of a datastore through vcsnap's own readers (the same
// URL forms the CLI takes).
func readState(t *testing.T, url string, o open.Options) state {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, err := open.Source(ctx, url, o)
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(url), err)
	}
	defer src.Close()
	c := &collector{s: state{}}
	if _, err := src.Read(ctx, c); err != nil {
		t.Fatalf("read %s: %v", open.Redact(url), err)
	}
	return c.s
}

// etcdState reads every key of an etcd server, optionally at a revision.
func etcdState(t *testing.T, cli *clientv3.Client, rev int64) state {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithFromKey()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := cli.Get(ctx, "\x00", opts...)
	if err != nil {
		t.Fatalf("read etcd at revision %d: %v", rev, err)
	}
	s := state{}
	for _, kv := range resp.Kvs {
		s[string(kv.Key)] = string(kv.Value)
	}
	return s
}

// diff describes how two states differ ("" if equal), naming a few keys.
func (s state) diff(o state) string {
	var only, other, changed []string
	for k, v := range s {
		ov, ok := o[k]
		switch {
		case !ok:
			only = append(only, k)
		case ov != v:
			changed = append(changed, k)
		}
	}
	for k := range o {
		if _, ok := s[k]; !ok {
			other = append(other, k)
		}
	}
	if len(only)+len(other)+len(changed) == 0 {
		return ""
	}
	few := func(ks []string) string {
		sort.Strings(ks)
		if len(ks) > 3 {
			return strings.Join(ks[:3], ", ") + fmt.Sprintf(" and %d more", len(ks)-3)
		}
		return strings.Join(ks, ", ")
	}
	return fmt.Sprintf("%d keys only in the first [%s], %d only in the second [%s], %d with other values [%s]",
		len(only), few(only), len(other), few(other), len(changed), few(changed))
}

// dirDigest fingerprints every file under dir (names, sizes, contents), so a test can
// prove a target directory was not touched at all.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s\x00", rel)
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%d\x00", len(b))
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("fingerprint %s: %v", dir, err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// fillEtcd writes n keys under prefix with values of about size bytes drawn from seed,
// in transactions of 100.
func fillEtcd(t *testing.T, cli *clientv3.Client, prefix string, n, size int, seed int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			v := pseudoRandom(seed*1_000_000+int64(j), size)
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%06d", prefix, j), v))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("fill etcd: %v", err)
		}
	}
}

// pseudoRandom is printable, poorly compressible text from a seed.
func pseudoRandom(seed int64, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
	b := make([]byte, n)
	x := uint64(seed)*6364136223846793005 + 1442695040888963407
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = alphabet[x%64]
	}
	return string(b)
}
