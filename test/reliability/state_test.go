package reliability

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/stdlib"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	_ "modernc.org/sqlite"

	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
	"github.com/vcsnap/vcsnap/datastore/open"
)

// state is a datastore's live keys and values.
type state map[string]string

// readState reads every live key of a datastore with the datastore's own client, not with
// vcsnap's readers, so that a bug shared by vcsnap's reader and writer cannot hide: etcd
// through clientv3, kine's table (SQLite, PostgreSQL, MySQL) with a query of its own that
// applies kine's rules (the newest row of a name, unless deleted; bookkeeping rows left
// out). The URL forms are the CLI's; only their parsing is vcsnap's.
func readState(t *testing.T, url string, o open.Options) state {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if etcdURL(url) {
		c, err := etcdv3.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, TLS: c.TLS, DialTimeout: 10 * time.Second,
			MaxCallRecvMsgSize: 256 << 20, Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("connect %s: %v", url, err)
		}
		defer cli.Close()
		s := etcdState(t, cli, 0)
		// The apiserver's compaction marker, and the health key kine writes itself: not data.
		delete(s, "compact_rev_key")
		delete(s, "/registry/health")
		return s
	}
	c, err := kinesql.ParseURL(url, o.Password)
	if err != nil {
		t.Fatal(err)
	}
	var db *sql.DB
	switch c.Dialect {
	case kinesql.SQLite:
		db, err = sql.Open("sqlite", "file:"+c.Path+"?mode=ro")
	case kinesql.Postgres:
		db = stdlib.OpenDB(*c.Postgres)
	case kinesql.MySQL:
		conn, cerr := mysql.NewConnector(c.MySQL)
		if err = cerr; err == nil {
			db = sql.OpenDB(conn)
		}
	}
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(url), err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT k.name, k.value FROM kine k
		WHERE k.id = (SELECT MAX(m.id) FROM kine m WHERE m.name = k.name) AND k.deleted = 0`)
	if err != nil {
		t.Fatalf("read kine's table at %s: %v", open.Redact(url), err)
	}
	defer rows.Close()
	s := state{}
	for rows.Next() {
		var name string
		var value []byte
		if err := rows.Scan(&name, &value); err != nil {
			t.Fatal(err)
		}
		if name == "compact_rev_key" || name == "compact_rev_key_apiserver" || strings.HasPrefix(name, "gap-") || name == "/registry/health" {
			continue // kine's bookkeeping, and the health key kine writes itself
		}
		s[name] = string(value)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

func etcdURL(url string) bool {
	for _, p := range []string{"etcd://", "etcds://", "unix://"} {
		if strings.HasPrefix(url, p) {
			return true
		}
	}
	return false
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
