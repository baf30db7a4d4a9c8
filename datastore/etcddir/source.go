package etcddir

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/server/v3/lease/leasepb"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.etcd.io/etcd/server/v3/storage/schema"

	"github.com/vcsnap/vcsnap/datastore"
)

// Source reads an offline etcd data directory's database (member/snap/db) read-only:
// the newest revision of every key that is not deleted. etcd must be stopped (its file
// lock is respected). The key index is built in memory (about 100 bytes per key).
type Source struct {
	cfg Config
	db  *bolt.DB
}

// OpenSource opens the data directory's database read-only.
func OpenSource(ctx context.Context, c Config) (*Source, error) {
	db, err := openDB(c.dbPath())
	if err != nil {
		return nil, err
	}
	return &Source{cfg: c, db: db}, nil
}

// openDB opens etcd's bbolt file read-only, failing fast if etcd holds it.
func openDB(path string) (*bolt.DB, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist: not an etcd data directory (want <dir>/member/snap/db)", datastore.ErrUnavailable, path)
		}
		return nil, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s is locked: a running etcd has it open; stop it first (scale the virtual cluster's StatefulSet to 0)",
				datastore.ErrUnavailable, path)
		}
		return nil, fmt.Errorf("%w: open %s: %v", datastore.ErrUnavailable, path, err)
	}
	return db, nil
}

func (s *Source) Kind() string { return "etcd" }
func (s *Source) Close() error { return s.db.Close() }

type indexEntry struct {
	rev       []byte
	tombstone bool
}

// index maps every key to the bucket key of its newest revision, and returns the
// store's revision.
func index(tx *bolt.Tx) (map[string]indexEntry, int64, error) {
	kb := tx.Bucket(schema.Key.Name())
	if kb == nil {
		return nil, 0, fmt.Errorf("%w: no key bucket: not an etcd database", datastore.ErrUnavailable)
	}
	idx := map[string]indexEntry{}
	var rev int64
	var kv mvccpb.KeyValue
	err := kb.ForEach(func(k, v []byte) error {
		if len(k) != 17 && len(k) != 18 {
			return fmt.Errorf("unexpected revision key %x in etcd's key bucket", k)
		}
		bk := mvcc.BytesToBucketKey(k)
		rev = max(rev, bk.Main)
		kv.Reset()
		if err := kv.Unmarshal(v); err != nil {
			return fmt.Errorf("revision %d: %w", bk.Main, err)
		}
		if len(kv.Key) == 0 {
			return nil // a revision bump's placeholder
		}
		idx[string(kv.Key)] = indexEntry{rev: append([]byte(nil), k...), tombstone: mvcc.IsTombstone(k)}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if mb := tx.Bucket(schema.Meta.Name()); mb != nil {
		for _, name := range [][]byte{schema.ScheduledCompactKeyName, schema.FinishedCompactKeyName} {
			if b := mb.Get(name); len(b) == 17 {
				rev = max(rev, mvcc.BytesToRev(b).Main)
			}
		}
	}
	return idx, rev, nil
}

// Revision is the store's current revision.
func (s *Source) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		_, rev, err = index(tx)
		return err
	})
	return rev, err
}

func (s *Source) Count(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		idx, _, err := index(tx)
		for k, e := range idx {
			if !e.tombstone && !datastore.IsEtcdBookkeeping([]byte(k)) {
				n++
			}
		}
		return err
	})
	return n, err
}

// Read emits every live key in key order with its lease (remaining TTL when etcd
// checkpointed one, else the granted TTL).
func (s *Source) Read(ctx context.Context, emit datastore.Emitter) (int64, error) {
	var rev int64
	err := s.db.View(func(tx *bolt.Tx) error {
		idx, r, err := index(tx)
		if err != nil {
			return err
		}
		rev = r
		keys := make([]string, 0, len(idx))
		for k, e := range idx {
			if !e.tombstone && !datastore.IsEtcdBookkeeping([]byte(k)) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		leases := map[int64]*leasepb.Lease{}
		if lb := tx.Bucket(schema.Lease.Name()); lb != nil {
			if err := lb.ForEach(func(_, v []byte) error {
				var l leasepb.Lease
				if err := l.Unmarshal(v); err != nil {
					return err
				}
				leases[l.ID] = &l
				return nil
			}); err != nil {
				return fmt.Errorf("read leases: %w", err)
			}
		}
		emitted := map[int64]bool{}
		kb := tx.Bucket(schema.Key.Name())
		for i, k := range keys {
			if i%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			var kv mvccpb.KeyValue
			if err := kv.Unmarshal(kb.Get(idx[k].rev)); err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			rec := datastore.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision,
				Version: kv.Version, Lease: kv.Lease}
			if rec.Value == nil {
				rec.Value = []byte{}
			}
			if rec.Lease != 0 && !emitted[rec.Lease] {
				l, ok := leases[rec.Lease]
				if !ok {
					rec.Lease = 0 // revoked: the key would have gone with it
				} else {
					ttl := l.TTL
					if l.RemainingTTL > 0 {
						ttl = l.RemainingTTL
					}
					if err := emit.Lease(datastore.Lease{ID: l.ID, TTL: ttl, GrantedTTL: l.TTL}); err != nil {
						return err
					}
					emitted[rec.Lease] = true
				}
			}
			if err := emit.Put(&rec); err != nil {
				return err
			}
		}
		return nil
	})
	return rev, err
}
