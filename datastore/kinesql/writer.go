package kinesql

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vcsnap/vcsnap/datastore"
)

// Batches of rows per INSERT statement: few round trips, statements well under the
// servers' packet limits (MySQL's max_allowed_packet is 16 MiB by default on MariaDB).
// SQLite has no round trips, and its driver binds parameters in quadratic time: small
// batches there.
const (
	maxBatchRows       = 500
	maxBatchRowsSQLite = 16
	maxBatchBytes      = 4 << 20
)

// healthKey is the key kine writes when it starts; alone it does not make a table non-empty.
const healthKey = "/registry/health"

// revisionPlan says which ids the restored rows get. Every key is written again at a new
// revision above max(snapshot revision, target's previous revision) + bump, in key order,
// one row per key; the compaction mark comes last and is the final revision. So every
// restored object's resourceVersion is above anything a client can have seen, and every
// older revision is compacted: watchers get "too old resource version" and re-list.
type revisionPlan struct {
	base int64 // ids start at base+1
}

func newPlan(opts datastore.PrepareOptions, previous int64) revisionPlan {
	return revisionPlan{base: max(opts.SnapshotRevision, previous) + max(opts.BumpRevision, 1)}
}

// rowWriter turns bundle records into kine rows and inserts them in batches inside tx.
type rowWriter struct {
	dialect string
	tx      *sql.Tx
	next    int64           // the id of the next row
	leases  map[int64]int64 // bundle lease ID -> kine TTL in seconds
	rows    int64

	args  []any
	n     int
	bytes int
	stmt  *sql.Stmt // the prepared INSERT of a full batch
	stmtN int
}

func newRowWriter(dialect string, tx *sql.Tx, plan revisionPlan) *rowWriter {
	return &rowWriter{dialect: dialect, tx: tx, next: plan.base + 1, leases: map[int64]int64{}}
}

// lease records a lease: kine's lease column is a TTL in seconds, re-armed when kine
// starts; the lease's remaining TTL is the rule (as a restore into etcd re-grants it).
func (w *rowWriter) lease(l datastore.Lease) {
	w.leases[l.ID] = max(l.TTL, 1)
}

func (w *rowWriter) put(ctx context.Context, kv *datastore.KeyValue) error {
	if datastore.IsBookkeeping(kv.Key) {
		return nil // kine's own rows: the target gets its own compaction mark
	}
	if err := w.checkKey(kv.Key); err != nil {
		return err
	}
	var ttl int64
	if kv.Lease != 0 {
		t, ok := w.leases[kv.Lease]
		if !ok {
			return fmt.Errorf("key %q refers to unknown lease %d", kv.Key, kv.Lease)
		}
		ttl = t
	}
	id := w.next
	w.next++
	// Keep the key's create revision when it is older than the row, as kine does for an
	// updated key; a key created at this row is marked created.
	created, createRev := 0, kv.CreateRevision
	if createRev <= 0 || createRev >= id {
		created, createRev = 1, 0
	}
	value := kv.Value
	if value == nil {
		value = []byte{}
	}
	// string() and the copy: the record's slices are reused by the reader.
	w.args = append(w.args, id, string(kv.Key), created, 0, createRev, 0, ttl, append([]byte(nil), value...))
	w.n++
	w.bytes += len(kv.Key) + len(value)
	w.rows++
	limit := maxBatchRows
	if w.dialect == SQLite {
		limit = maxBatchRowsSQLite
	}
	if w.n >= limit || w.bytes >= maxBatchBytes {
		return w.flush(ctx)
	}
	return nil
}

// checkKey refuses keys the dialect's name column cannot hold.
func (w *rowWriter) checkKey(key []byte) error {
	switch w.dialect {
	case MySQL:
		if len(key) > 630 {
			return fmt.Errorf("key %q is %d bytes: kine's MySQL table holds names up to 630 bytes", key, len(key))
		}
		for _, b := range key {
			if b >= 0x80 {
				return fmt.Errorf("key %q is not ASCII: kine's MySQL table stores names as ASCII", key)
			}
		}
	case Postgres:
		if !utf8.Valid(key) || strings.IndexByte(string(key), 0) >= 0 {
			return fmt.Errorf("key %q is not valid UTF-8 text: kine's PostgreSQL table stores names as text", key)
		}
	}
	return nil
}

func (w *rowWriter) placeholders(rows, cols int) string {
	var sb strings.Builder
	i := 1
	for r := 0; r < rows; r++ {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for c := 0; c < cols; c++ {
			if c > 0 {
				sb.WriteString(", ")
			}
			if w.dialect == Postgres {
				fmt.Fprintf(&sb, "$%d", i)
			} else {
				sb.WriteByte('?')
			}
			i++
		}
		sb.WriteString(", NULL)")
	}
	return sb.String()
}

const insertColumns = `INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES `

func (w *rowWriter) flush(ctx context.Context) error {
	if w.n == 0 {
		return nil
	}
	q := insertColumns + w.placeholders(w.n, 8)
	var err error
	if w.stmt != nil && w.stmtN == w.n {
		_, err = w.stmt.ExecContext(ctx, w.args...)
	} else if w.stmt == nil && w.n > 1 {
		// Prepare the batch statement once: batches are full but for the last one.
		if w.stmt, err = w.tx.PrepareContext(ctx, q); err == nil {
			w.stmtN = w.n
			_, err = w.stmt.ExecContext(ctx, w.args...)
		}
	} else {
		_, err = w.tx.ExecContext(ctx, q, w.args...)
	}
	if err != nil {
		return fmt.Errorf("insert rows %d-%d: %w", w.next-int64(w.n), w.next-1, err)
	}
	w.args, w.n, w.bytes = w.args[:0], 0, 0
	return nil
}

// finish flushes and writes kine's compaction mark as the last row: its id is the final
// revision, and its prev_revision (where kine keeps the compacted revision) is that same
// revision, so kine refuses reads and watches below it.
func (w *rowWriter) finish(ctx context.Context) (int64, error) {
	if err := w.flush(ctx); err != nil {
		return 0, err
	}
	if w.stmt != nil {
		w.stmt.Close()
		w.stmt = nil
	}
	final := w.next
	q := insertColumns + w.placeholders(1, 8)
	if _, err := w.tx.ExecContext(ctx, q, final, "compact_rev_key", 1, 0, 0, final, 0, []byte{}); err != nil {
		return 0, fmt.Errorf("write kine's compaction mark: %w", err)
	}
	return final, nil
}

// inspect reads a target table's previous revision and how many data keys it holds (kine's
// bookkeeping and its health key left out).
func inspect(ctx context.Context, q rowQuerier) (rev, keys int64, err error) {
	var r sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT MAX(id) FROM kine`).Scan(&r); err != nil {
		return 0, 0, err
	}
	query := `SELECT COUNT(*) FROM kine AS kv
		INNER JOIN (SELECT MAX(id) AS id FROM kine GROUP BY name) AS mkv ON mkv.id = kv.id
		WHERE kv.deleted = 0 AND kv.name NOT IN ('compact_rev_key', 'compact_rev_key_apiserver', '` + healthKey + `')
		AND kv.name NOT LIKE 'gap-%'`
	if err := q.QueryRowContext(ctx, query).Scan(&keys); err != nil {
		return 0, 0, err
	}
	return r.Int64, keys, nil
}

type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}
