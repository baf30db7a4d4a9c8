package kinesql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
)

const (
	// followBatch bounds the rows one poll reads.
	followBatch = 2000
	// followIdle is how long to wait between polls that found nothing new.
	followIdle = 200 * time.Millisecond
	// gapWait is how long a missing id may stay missing before it is taken as a hole for
	// good. On PostgreSQL and MySQL an id is handed out when an insert starts and becomes
	// visible when it commits, so a higher id can be seen first; kine itself waits for
	// such a row and then fills the hole with a "gap-" row, which ends the wait here.
	gapWait = 10 * time.Second
)

// Follow reads kine's rows with an id above the last one read, in id order: every
// write since `after`, read directly from the table (see datastore.ChangeSource). A
// compaction by kine past `after` (the compact_rev_key row) returns ErrCompacted.
// progressEvery is unused: an idle table costs one small query per poll anyway.
func (s *Source) Follow(ctx context.Context, after int64, progressEvery time.Duration, deliver datastore.DeliverFunc) error {
	if s.immutable {
		// A live follow must see kine's later writes: open the file as a reader of its WAL.
		s.cfg.BusyTimeout = max(s.cfg.BusyTimeout, time.Second)
		db, err := connectMode(ctx, s.cfg, true, false)
		if err != nil {
			return err
		}
		s.db.Close()
		s.db, s.immutable = db, false
	}
	var gapSince time.Time
	holes := map[int64]time.Time{} // ids passed over as holes, watched for a late commit
	for {
		if err := s.checkHoles(ctx, holes); err != nil {
			return err
		}
		changes, upTo, gap, err := s.changesAfter(ctx, after)
		if err != nil {
			return err
		}
		if gap {
			if gapSince.IsZero() {
				gapSince = time.Now()
			} else if time.Since(gapSince) > gapWait {
				slog.Warn("kine's table is missing a revision for longer than kine waits to fill it; taking it as a hole (no write was lost: the id was never committed)",
					"revision", after+1, "waited", gapWait)
				changes, upTo, err = s.acceptGap(ctx, after)
				if err != nil {
					return err
				}
				first := after + 1
				if len(changes) > 0 {
					for id := first; id < changes[0].KV.ModRevision && len(holes) < 10000; id++ {
						holes[id] = time.Now()
					}
				}
				gap = false
			}
		}
		if !gap {
			gapSince = time.Time{}
		}
		// An idle poll reports too: silence from a healthy source must never look like
		// one that is down.
		after = max(after, upTo)
		if err := deliver(changes, after); err != nil {
			return err
		}
		if len(changes) < followBatch/2 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(followIdle):
			}
		}
	}
}

// changesAfter reads the rows after `after` in one read transaction. It stops before a
// missing id (gap) so nothing committed later with a lower id is passed over.
func (s *Source) changesAfter(ctx context.Context, after int64) (changes []datastore.Change, upTo int64, gap bool, err error) {
	return s.readRows(ctx, after, false)
}

// acceptGap reads past a hole that never filled.
func (s *Source) acceptGap(ctx context.Context, after int64) ([]datastore.Change, int64, error) {
	c, up, _, err := s.readRows(ctx, after, true)
	return c, up, err
}

func (s *Source) readRows(ctx context.Context, after int64, acceptGap bool) (changes []datastore.Change, upTo int64, gap bool, err error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.cfg.Dialect != SQLite {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, 0, false, classify(s.cfg, err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	var compact sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(prev_revision) FROM kine WHERE name = 'compact_rev_key'`).Scan(&compact); err != nil {
		return nil, 0, false, classify(s.cfg, err)
	}
	if compact.Int64 > after {
		return nil, 0, false, fmt.Errorf("%w: kine compacted its table up to revision %d, past the last revision read (%d)",
			datastore.ErrCompacted, compact.Int64, after)
	}
	q := fmt.Sprintf(`SELECT id, name, created, deleted, create_revision, lease, value FROM kine WHERE id > %s ORDER BY id LIMIT %d`,
		s.param(1), followBatch)
	rows, err := tx.QueryContext(ctx, q, after)
	if err != nil {
		return nil, 0, false, classify(s.cfg, err)
	}
	defer rows.Close()
	upTo = after
	for rows.Next() {
		var (
			id, created, deleted, createRev, lease sql.NullInt64
			name, value                            []byte
		)
		if err := rows.Scan(&id, &name, &created, &deleted, &createRev, &lease, &value); err != nil {
			return nil, 0, false, classify(s.cfg, err)
		}
		if id.Int64 != upTo+1 && !acceptGap {
			gap = true
			break
		}
		acceptGap = false // only the first hole
		upTo = id.Int64
		if datastore.IsBookkeeping(name) {
			continue
		}
		c := datastore.Change{KV: datastore.KeyValue{Key: name, ModRevision: id.Int64}}
		if deleted.Int64 != 0 {
			c.Delete = true
			changes = append(changes, c)
			continue
		}
		// As Read: kine keeps no per-key version (1 for the creating row, else 2).
		c.KV = datastore.KeyValue{Key: name, Value: value, ModRevision: id.Int64, CreateRevision: createRev.Int64, Version: 2}
		if created.Int64 != 0 || c.KV.CreateRevision <= 0 || c.KV.CreateRevision > c.KV.ModRevision {
			c.KV.CreateRevision, c.KV.Version = c.KV.ModRevision, 1
		}
		if c.KV.Value == nil {
			c.KV.Value = []byte{}
		}
		if ttl := lease.Int64; ttl > 0 {
			c.KV.Lease = ttl
			c.Lease = datastore.Lease{ID: ttl, TTL: ttl, GrantedTTL: ttl}
		}
		changes = append(changes, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, false, classify(s.cfg, err)
	}
	return changes, upTo, gap, nil
}

// CheckFollow reports (ErrCompacted) when kine compacted its table past `after`.
func (s *Source) CheckFollow(ctx context.Context, after int64) error {
	var compact sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(prev_revision) FROM kine WHERE name = 'compact_rev_key'`).Scan(&compact); err != nil {
		return classify(s.cfg, err)
	}
	if compact.Int64 > after {
		return fmt.Errorf("%w: kine compacted its table up to revision %d, past the chain's last revision %d",
			datastore.ErrCompacted, compact.Int64, after)
	}
	return nil
}

// holeWatch is how long an id passed over as a hole is watched for a late commit.
const holeWatch = 5 * time.Minute

// checkHoles fails the stream (as a compaction would: only a new full read can go on)
// when a row appears for an id that was passed over as a hole: a write committed after
// the changes around it were delivered, so the deltas would miss it.
func (s *Source) checkHoles(ctx context.Context, holes map[int64]time.Time) error {
	if len(holes) == 0 {
		return nil
	}
	for id, at := range holes {
		if time.Since(at) > holeWatch {
			delete(holes, id)
		}
	}
	for id := range holes {
		var name []byte
		err := s.db.QueryRowContext(ctx, fmt.Sprintf(`SELECT name FROM kine WHERE id = %s`, s.param(1)), id).Scan(&name)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return classify(s.cfg, err)
		}
		delete(holes, id)
		if !datastore.IsBookkeeping(name) {
			return fmt.Errorf("%w: the write of revision %d (%s) committed after later revisions were read; the history must be read again from a full read",
				datastore.ErrCompacted, id, name)
		}
	}
	return nil
}
