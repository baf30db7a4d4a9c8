package kinesql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/vcsnap/vcsnap/datastore"
)

// Source reads kine's table in one read transaction: a consistent view at the newest id.
//
// SQLite files are opened read-only and never modified. A live database (kine running:
// its -wal file exists or another process holds SQLite locks on it) is read through
// SQLite's WAL like any reader, concurrently with kine's writes. An offline file (a copy,
// or kine stopped) is opened as immutable, so reading it creates no -wal or -shm file
// next to it; should another process open it during the read, the read is refused and
// can be repeated in live mode.
type Source struct {
	cfg Config
	db  *sql.DB

	immutable bool
	before    os.FileInfo
}

// OpenSource connects and checks that the database holds kine's table.
func OpenSource(ctx context.Context, c Config) (*Source, error) {
	s := &Source{cfg: c}
	if err := s.open(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// open (re)connects; for SQLite it decides between live and offline (immutable) reading.
func (s *Source) open(ctx context.Context) error {
	if s.db != nil {
		s.db.Close()
		s.db = nil
	}
	c := s.cfg
	if c.Dialect == SQLite {
		if err := checkSQLiteFile(c.Path); err != nil {
			return err
		}
		pid, err := lockHolder(c.Path)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", datastore.ErrUnavailable, c.Path, err)
		}
		_, walErr := os.Stat(c.Path + "-wal")
		s.immutable = pid == 0 && errors.Is(walErr, os.ErrNotExist)
		if s.before, err = os.Stat(c.Path); err != nil {
			return fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
		}
	}
	db, err := connectMode(ctx, c, true, s.immutable)
	if err != nil {
		return err
	}
	exists, err := checkSchema(ctx, db, c)
	if err == nil && !exists {
		err = notKine(ctx, db, c)
	}
	if err != nil {
		db.Close()
		return err
	}
	s.db = db
	return nil
}

// changedDuringRead reports whether an offline SQLite file was opened or written by
// another process while it was being read as immutable.
func (s *Source) changedDuringRead() error {
	if !s.immutable {
		return nil
	}
	st, err := os.Stat(s.cfg.Path)
	_, walErr := os.Stat(s.cfg.Path + "-wal")
	if err != nil || st.Size() != s.before.Size() || !st.ModTime().Equal(s.before.ModTime()) || !errors.Is(walErr, os.ErrNotExist) {
		return fmt.Errorf("%w: %s was opened or changed by another process while it was read as an offline file (did kine start?); read it again",
			datastore.ErrCompacted, s.cfg.Path)
	}
	return nil
}

// Kind is "kine-sqlite", "kine-mysql" or "kine-postgres".
func (s *Source) Kind() string { return s.cfg.Kind() }

func (s *Source) Close() error {
	if s.db == nil {
		return nil
	}
	return s.db.Close()
}

// liveQuery selects the newest row of every name at or below a revision, if it is not a
// deletion, ordered by the key's bytes (as etcd orders keys). cols are the columns of kv.
func (s *Source) liveQuery(cols string, ordered bool) string {
	order := "kv.name"
	switch s.cfg.Dialect {
	case MySQL:
		// kine's name column is ascii with a case-insensitive collation.
		order = "CAST(kv.name AS BINARY)"
	case Postgres:
		order = `kv.name COLLATE "C"`
	}
	if s.cfg.Dialect == SQLite && ordered {
		// SQLite walks kine_name_index in key order and finds each name's newest row with
		// one index seek: no sort of the values (a join with GROUP BY would need one).
		return fmt.Sprintf(`SELECT %s FROM kine AS kv
			WHERE kv.id = (SELECT MAX(k2.id) FROM kine AS k2 WHERE k2.name = kv.name AND k2.id <= ?1)
			AND kv.deleted = 0
			ORDER BY kv.name`, cols)
	}
	q := fmt.Sprintf(`SELECT %s FROM kine AS kv
		INNER JOIN (SELECT MAX(id) AS id FROM kine WHERE id <= %s GROUP BY name) AS mkv ON mkv.id = kv.id
		WHERE kv.deleted = 0`, cols, s.param(1))
	if ordered {
		q += " ORDER BY " + order
	}
	return q
}

func (s *Source) param(i int) string {
	if s.cfg.Dialect == Postgres {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// Revision is the current revision: the newest id.
func (s *Source) Revision(ctx context.Context) (int64, error) {
	var rev sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(id) FROM kine`).Scan(&rev); err != nil {
		return 0, classify(s.cfg, err)
	}
	return rev.Int64, nil
}

// Count returns the number of live keys now, bookkeeping rows left out.
func (s *Source) Count(ctx context.Context) (int64, error) {
	q := fmt.Sprintf(`SELECT COUNT(*) FROM (%s) AS live
		WHERE name NOT IN ('compact_rev_key', 'compact_rev_key_apiserver') AND name NOT LIKE 'gap-%%'`,
		s.liveQuery("kv.name", false))
	var n int64
	if err := s.db.QueryRowContext(ctx, q, int64(1)<<62).Scan(&n); err != nil {
		return -1, classify(s.cfg, err)
	}
	return n, nil
}

// Read emits every live key at the newest revision, in key order, in one read
// transaction, and returns that revision.
//
// kine keeps no per-key version: it is 1 for a key still at the row that created it and 2
// otherwise (modified at least once; the exact count is lost to kine's compaction). A
// lease is kine's TTL in seconds, so it is emitted as a lease whose ID and TTL are that
// number, before the first key that uses it.
func (s *Source) Read(ctx context.Context, emit datastore.Emitter) (int64, error) {
	if s.cfg.Dialect == SQLite {
		// Decide again between live and offline reading: kine may have started or stopped.
		if err := s.open(ctx); err != nil {
			return 0, err
		}
	}
	rev, err := s.read(ctx, emit)
	if err != nil {
		return 0, err
	}
	if err := s.changedDuringRead(); err != nil {
		return 0, err
	}
	return rev, nil
}

func (s *Source) read(ctx context.Context, emit datastore.Emitter) (int64, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.cfg.Dialect != SQLite {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return 0, classify(s.cfg, err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	if s.cfg.Dialect == MySQL {
		// A slow consumer (an upload) must not make the server drop the streaming result.
		if _, err := tx.ExecContext(ctx, `SET SESSION net_write_timeout = 3600`); err != nil {
			return 0, classify(s.cfg, err)
		}
	}
	var rev sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(id) FROM kine`).Scan(&rev); err != nil {
		return 0, classify(s.cfg, err)
	}
	if s.cfg.Dialect != SQLite {
		// An insert still in flight holds an id below MAX(id) that this read cannot see
		// yet: read at the revision below the first such hole, so the bundle is exactly
		// the state at its revision and the history after it (snapshot watch) has the row.
		if rev.Int64, err = s.belowFirstHole(ctx, tx, rev.Int64); err != nil {
			return 0, err
		}
	}
	rows, err := tx.QueryContext(ctx, s.liveQuery("kv.id, kv.name, kv.created, kv.create_revision, kv.lease, kv.value", true), rev.Int64)
	if err != nil {
		return 0, classify(s.cfg, err)
	}
	defer rows.Close()
	leases := map[int64]bool{}
	var (
		id, created, createRev, lease sql.NullInt64
		name                          []byte
		value                         []byte
	)
	for rows.Next() {
		if err := rows.Scan(&id, &name, &created, &createRev, &lease, &value); err != nil {
			return 0, classify(s.cfg, err)
		}
		if datastore.IsBookkeeping(name) {
			continue
		}
		kv := datastore.KeyValue{Key: name, Value: value, ModRevision: id.Int64, CreateRevision: createRev.Int64, Version: 2}
		if created.Int64 != 0 || kv.CreateRevision <= 0 || kv.CreateRevision > kv.ModRevision {
			kv.CreateRevision, kv.Version = kv.ModRevision, 1
		}
		if kv.Value == nil {
			kv.Value = []byte{}
		}
		if ttl := lease.Int64; ttl > 0 {
			kv.Lease = ttl
			if !leases[ttl] {
				if err := emit.Lease(datastore.Lease{ID: ttl, TTL: ttl, GrantedTTL: ttl}); err != nil {
					return 0, err
				}
				leases[ttl] = true
			}
		}
		if err := emit.Put(&kv); err != nil {
			return 0, err
		}
	}
	if err := rows.Err(); err != nil {
		return 0, classify(s.cfg, err)
	}
	return rev.Int64, nil
}

// holeWindow is how many of the newest ids are checked for a hole left by an insert in
// flight (kine fills a hole that stays with a "gap-" row within seconds).
const holeWindow = 5000

// belowFirstHole returns the highest revision up to max with every id of the newest
// holeWindow present in the transaction's view.
func (s *Source) belowFirstHole(ctx context.Context, tx *sql.Tx, top int64) (int64, error) {
	from := top - holeWindow
	var compact sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(prev_revision) FROM kine WHERE name = 'compact_rev_key'`).Scan(&compact); err != nil {
		return 0, classify(s.cfg, err)
	}
	from = max(from, compact.Int64) // kine's compaction removes rows below its mark
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(`SELECT id FROM kine WHERE id > %s ORDER BY id`, s.param(1)), from)
	if err != nil {
		return 0, classify(s.cfg, err)
	}
	defer rows.Close()
	want := int64(-1)
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return 0, classify(s.cfg, err)
		}
		if want >= 0 && id != want {
			return want - 1, nil // want is missing
		}
		want = id + 1
	}
	return top, classify(s.cfg, rows.Err())
}
