package kinesql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vcsnap/vcsnap/datastore"
)

// ServerTarget restores into kine's table on MySQL/MariaDB or PostgreSQL, in ONE
// transaction: a failure or an Abort rolls everything back, leaving the table as it was
// (empty, or with its old rows when --force was replacing them). The table is created
// with kine's schema when absent (on MySQL that DDL commits on its own, so a failed
// restore leaves an empty table). Kine must be stopped while it runs.
type ServerTarget struct {
	cfg Config
	db  *sql.DB

	opts   datastore.PrepareOptions
	state  datastore.TargetState
	exists bool
	plan   revisionPlan

	tx *sql.Tx
	w  *rowWriter
	// commitLost is set when the link dropped during COMMIT: the server then applied the
	// whole restore or none of it, and only reading the table tells which.
	commitLost error
}

// OpenServerTarget connects to a MySQL or PostgreSQL database.
func OpenServerTarget(ctx context.Context, c Config) (*ServerTarget, error) {
	if c.Dialect != MySQL && c.Dialect != Postgres {
		return nil, fmt.Errorf("OpenServerTarget: dialect %q", c.Dialect)
	}
	db, err := connect(ctx, c, false)
	if err != nil && isNoDatabase(err) {
		// As kine does when it starts: create the database.
		if cerr := createDatabase(ctx, c); cerr != nil {
			return nil, fmt.Errorf("%w (and creating it failed: %v)", err, cerr)
		}
		slog.Info("created the target database", "database", c.where())
		db, err = connect(ctx, c, false)
	}
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(2)
	return &ServerTarget{cfg: c, db: db}, nil
}

func (t *ServerTarget) Kind() string { return t.cfg.Kind() }

func (t *ServerTarget) Close() error {
	if t.tx != nil {
		_ = t.tx.Rollback()
		t.tx = nil
	}
	return t.db.Close()
}

// Prepare checks kine's table (it must have kine's schema, or not exist), its previous
// revision (the newest id, or the id sequence if that is higher) and whether it holds
// data: kine's own rows (its compaction mark and health key) do not count.
func (t *ServerTarget) Prepare(ctx context.Context, opts datastore.PrepareOptions) (datastore.TargetState, error) {
	t.opts = opts
	exists, err := checkSchema(ctx, t.db, t.cfg)
	if err != nil {
		return t.state, err
	}
	t.exists = exists
	if exists {
		rev, keys, err := inspect(ctx, t.db)
		if err != nil {
			return t.state, classify(t.cfg, err)
		}
		seq, err := t.sequence(ctx)
		if err != nil {
			return t.state, classify(t.cfg, err)
		}
		t.state = datastore.TargetState{Revision: max(rev, seq), Keys: keys}
	}
	if t.state.Keys > 0 && !opts.Force {
		return t.state, fmt.Errorf("%w: kine's table in %s holds %d keys (revision %d); restore into an empty table, or pass --force to replace them (in the same transaction: a failure keeps them)",
			datastore.ErrTargetNotEmpty, t.cfg.where(), t.state.Keys, t.state.Revision)
	}
	if n := t.otherSessions(ctx); n > 0 {
		slog.Warn("other sessions are connected to the target database: stop kine and the virtual control plane before restoring into it",
			"database", t.cfg.where(), "sessions", n)
	}
	t.plan = newPlan(opts, t.state.Revision)
	return t.state, nil
}

// sequence is the highest id the table's id generator has handed out.
func (t *ServerTarget) sequence(ctx context.Context) (int64, error) {
	switch t.cfg.Dialect {
	case Postgres:
		var seq sql.NullString
		if err := t.db.QueryRowContext(ctx, `SELECT pg_get_serial_sequence('kine', 'id')`).Scan(&seq); err != nil || !seq.Valid {
			return 0, err
		}
		var last int64
		var called bool
		if err := t.db.QueryRowContext(ctx, `SELECT last_value, is_called FROM `+seq.String).Scan(&last, &called); err != nil {
			return 0, err
		}
		if !called {
			last--
		}
		return last, nil
	case MySQL:
		var next sql.NullInt64
		err := t.db.QueryRowContext(ctx, `SELECT AUTO_INCREMENT FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'kine'`).Scan(&next)
		if err != nil || !next.Valid {
			return 0, err
		}
		return next.Int64 - 1, nil
	}
	return 0, nil
}

// otherSessions counts other connections to the database (kine's, typically); -1 if unknown.
func (t *ServerTarget) otherSessions(ctx context.Context) int {
	q := `SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`
	if t.cfg.Dialect == MySQL {
		q = `SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()`
	}
	var n int
	if err := t.db.QueryRowContext(ctx, q).Scan(&n); err != nil {
		return -1
	}
	return n
}

// Begin creates kine's table when absent and opens the transaction that removes the
// table's old rows (kine's own, or the data being replaced with --force) and writes the
// new ones.
func (t *ServerTarget) Begin(ctx context.Context) error {
	if !t.exists && t.cfg.Dialect == MySQL {
		// MySQL commits DDL on its own: create the table first; it stays empty on failure.
		for _, stmt := range mysqlSchema {
			if _, err := t.db.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("create kine's table: %w", classify(t.cfg, err))
			}
		}
	}
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return classify(t.cfg, err)
	}
	t.tx = tx
	if !t.exists && t.cfg.Dialect == Postgres {
		for _, stmt := range postgresSchema {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("create kine's table: %w", classify(t.cfg, err))
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM kine`); err != nil {
		return fmt.Errorf("remove the table's old rows: %w", classify(t.cfg, err))
	}
	t.w = newRowWriter(t.cfg.Dialect, tx, t.plan)
	return nil
}

func (t *ServerTarget) Lease(ctx context.Context, l datastore.Lease) error {
	t.w.lease(l)
	return nil
}

func (t *ServerTarget) Put(ctx context.Context, kv *datastore.KeyValue) error {
	if err := t.w.put(ctx, kv); err != nil {
		return t.explain(err)
	}
	return nil
}

// explain adds what a few server errors mean here.
func (t *ServerTarget) explain(err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1062 {
		return fmt.Errorf("%w (kine's MySQL table compares names case-insensitively: two keys differ only in case)", err)
	}
	if errors.As(err, &me) && me.Number == 1153 {
		return fmt.Errorf("%w (raise the server's max_allowed_packet)", err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "54000" {
		return fmt.Errorf("%w (a value is too large for PostgreSQL)", err)
	}
	return classify(t.cfg, err)
}

// Commit writes the compaction mark at the final revision, moves the id generator to it
// (PostgreSQL's sequence; MySQL's AUTO_INCREMENT follows the explicit ids by itself) and
// commits the transaction.
func (t *ServerTarget) Commit(ctx context.Context) (int64, error) {
	final, err := t.w.finish(ctx)
	if err != nil {
		return 0, t.explain(err)
	}
	if t.cfg.Dialect == Postgres {
		if _, err := t.tx.ExecContext(ctx, `SELECT setval(pg_get_serial_sequence('kine', 'id'), $1, true)`, final); err != nil {
			return 0, fmt.Errorf("move kine's id sequence to %d: %w", final, classify(t.cfg, err))
		}
	}
	err = t.tx.Commit()
	t.tx = nil
	if err != nil {
		if connectionLost(err) {
			t.commitLost = err
		}
		return 0, fmt.Errorf("commit: %w", classify(t.cfg, err))
	}
	if t.cfg.Dialect == MySQL {
		var next sql.NullInt64
		if err := t.db.QueryRowContext(ctx, `SELECT AUTO_INCREMENT FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'kine'`).Scan(&next); err == nil && next.Valid && next.Int64 <= final {
			// Not expected with InnoDB; make sure kine's next insert lands above the mark.
			if _, err := t.db.ExecContext(ctx, fmt.Sprintf(`ALTER TABLE kine AUTO_INCREMENT = %d`, final+1)); err != nil {
				return 0, fmt.Errorf("move kine's AUTO_INCREMENT above %d: %w", final, classify(t.cfg, err))
			}
		}
	}
	slog.Info("restored kine's table", "database", t.cfg.where(), "keys", t.w.rows, "revision", final)
	return final, nil
}

// Abort rolls the transaction back: the table is as it was before Begin.
func (t *ServerTarget) Abort(ctx context.Context) error {
	if t.commitLost != nil {
		return fmt.Errorf("the connection to %s dropped during COMMIT (%v): the database applied either the whole restore or none of it; read the table to tell which, and restore again if needed",
			t.cfg.where(), t.commitLost)
	}
	if t.tx == nil {
		return nil
	}
	err := t.tx.Rollback()
	t.tx = nil
	if errors.Is(err, sql.ErrTxDone) || (err != nil && connectionLost(err)) {
		// A transaction never committed dies with its connection: the server rolls it
		// back, so the table is as it was even though ROLLBACK could not be sent.
		return nil
	}
	return err
}

// KeepsPreviousOnAbort: the whole restore is one transaction, rolled back by Abort.
func (t *ServerTarget) KeepsPreviousOnAbort() {}

// connectionLost reports whether err means the link to the server is gone.
func connectionLost(err error) bool {
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) ||
		strings.Contains(err.Error(), "conn closed")
}

func isNoDatabase(err error) bool {
	var me *mysql.MySQLError
	var pe *pgconn.PgError
	return (errors.As(err, &me) && me.Number == 1049) || (errors.As(err, &pe) && pe.Code == "3D000")
}

// createDatabase creates the database the config names, connected to the server's
// default database.
func createDatabase(ctx context.Context, c Config) error {
	admin := c
	var stmt string
	switch c.Dialect {
	case MySQL:
		m := *c.MySQL
		m.DBName = ""
		admin.MySQL = &m
		stmt = "CREATE DATABASE IF NOT EXISTS `" + strings.ReplaceAll(c.MySQL.DBName, "`", "``") + "`"
	case Postgres:
		p := c.Postgres.Copy()
		p.Database = "postgres"
		admin.Postgres = p
		stmt = `CREATE DATABASE "` + strings.ReplaceAll(c.Postgres.Database, `"`, `""`) + `"`
	}
	db, err := openDB(admin, false, false)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, stmt)
	return err
}
