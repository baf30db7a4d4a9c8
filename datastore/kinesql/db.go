package kinesql

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/vcsnap/vcsnap/datastore"
)

// kineColumns are the columns of kine's table, in kine's order.
var kineColumns = []string{"id", "name", "created", "deleted", "create_revision", "prev_revision", "lease", "value", "old_value"}

// ErrNotKine means the database exists but holds no kine table.
var ErrNotKine = errors.New("not a kine database")

// ErrUnknownSchema means kine's table has columns vcsnap does not know.
var ErrUnknownSchema = errors.New("unknown kine schema")

// sqliteMagic starts every SQLite database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// checkSQLiteFile checks that path is an existing SQLite database, reading only its header.
func checkSQLiteFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %s does not exist (vcluster keeps kine's database at /data/state.db, older k3s layouts at /data/server/db/state.db)",
				datastore.ErrUnavailable, path)
		}
		return fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	if st.IsDir() {
		hint := ""
		if _, err := os.Stat(filepath.Join(path, "state.db")); err == nil {
			hint = fmt.Sprintf(": did you mean sqlite://%s?", filepath.Join(path, "state.db"))
		}
		return fmt.Errorf("%s is a directory, not a SQLite database file%s", path, hint)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	defer f.Close()
	hdr := make([]byte, len(sqliteMagic))
	if _, err := io.ReadFull(f, hdr); err != nil || !bytes.Equal(hdr, sqliteMagic) {
		if st.Size() == 0 {
			return fmt.Errorf("%w: %s is an empty file, not a SQLite database", ErrNotKine, path)
		}
		return fmt.Errorf("%w: %s is not a SQLite database (its first bytes are not the SQLite header)", ErrNotKine, path)
	}
	return nil
}

// sqliteDSN builds the modernc.org/sqlite DSN for a file: a URI, so mode=ro is honoured.
func sqliteDSN(path string, params url.Values) string {
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + params.Encode()
}

// openDB opens the database (no connection is made yet). immutable (SQLite only) reads
// a file no other process has open without locking it or creating -wal/-shm files.
func openDB(c Config, readOnly, immutable bool) (*sql.DB, error) {
	switch c.Dialect {
	case SQLite:
		p := url.Values{}
		if readOnly {
			p.Set("mode", "ro")
		}
		if immutable {
			p.Set("immutable", "1")
		}
		p.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", c.BusyTimeout.Milliseconds()))
		if readOnly {
			// A read walks the name index and the table once, in order: a small page
			// cache is enough (the operating system caches the file), and no mmap: its
			// pages would count against vcsnap's memory for the whole file size.
			p.Add("_pragma", "cache_size(-2048)")
		}
		p.Set("_txlock", "deferred")
		db, err := sql.Open("sqlite", sqliteDSN(c.Path, p))
		if err != nil {
			return nil, err
		}
		// One connection: a read is one transaction on one connection anyway, and SQLite
		// connections are not free.
		db.SetMaxOpenConns(1)
		return db, nil
	case MySQL:
		conn, err := mysql.NewConnector(c.MySQL)
		if err != nil {
			return nil, err
		}
		return sql.OpenDB(conn), nil
	case Postgres:
		return stdlib.OpenDB(*c.Postgres), nil
	}
	return nil, fmt.Errorf("unknown dialect %q", c.Dialect)
}

// connect opens the database and checks that it answers, turning the usual failures into
// errors that name the problem and the fix.
func connect(ctx context.Context, c Config, readOnly bool) (*sql.DB, error) {
	if c.Dialect == SQLite {
		if err := checkSQLiteFile(c.Path); err != nil {
			return nil, err
		}
	}
	return connectMode(ctx, c, readOnly, false)
}

func connectMode(ctx context.Context, c Config, readOnly, immutable bool) (*sql.DB, error) {
	db, err := openDB(c, readOnly, immutable)
	if err != nil {
		return nil, classify(c, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, classify(c, err)
	}
	return db, nil
}

// classify turns driver errors into messages naming the problem and the fix. It keeps
// the sentinel errors callers map to exit codes.
func classify(c Config, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%w: %s is locked by another process for longer than the busy timeout of %s (%v): a writer is holding an exclusive lock; retry, stop the other process, or raise it with ?busy-timeout=60s",
				datastore.ErrUnavailable, c.Path, c.BusyTimeout, err)
		case sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%w: %s is not a SQLite database (%v)", ErrNotKine, c.Path, err)
		case sqlite3.SQLITE_CORRUPT:
			return fmt.Errorf("%s is corrupt (%v): restore it from a backup or a vcsnap bundle", c.Path, err)
		case sqlite3.SQLITE_CANTOPEN:
			return fmt.Errorf("%w: cannot open %s (%v): check that the file and its directory are readable and, for a live database, that its -wal and -shm files are accessible",
				datastore.ErrUnavailable, c.Path, err)
		case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH:
			return fmt.Errorf("%w: %s: %v (check the file's permissions)", datastore.ErrUnavailable, c.Path, err)
		}
		return fmt.Errorf("%s: %w", c.Path, err)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1045, 1698: // ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
			return fmt.Errorf("%w: %s refused user %q: wrong password or user (%s); give the password with %s or --datastore-password-file",
				datastore.ErrUnavailable, c.where(), c.MySQL.User, me.Message, PasswordEnv)
		case 1044: // ER_DBACCESS_DENIED_ERROR
			return fmt.Errorf("%w: user %q may not use %s (%s): grant it access", datastore.ErrUnavailable, c.MySQL.User, c.where(), me.Message)
		case 1049: // ER_BAD_DB_ERROR
			return fmt.Errorf("%w: %s does not exist (%w): check the database name in the URL", datastore.ErrUnavailable, c.where(), err)
		}
		return fmt.Errorf("%s: %w", c.where(), err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Errorf("%w: %s refused user %q: wrong password or user (%s); give the password with %s or --datastore-password-file",
				datastore.ErrUnavailable, c.where(), c.Postgres.User, pe.Message, PasswordEnv)
		case "3D000": // invalid_catalog_name
			return fmt.Errorf("%w: %s does not exist (%w): check the database name in the URL", datastore.ErrUnavailable, c.where(), err)
		case "42501":
			return fmt.Errorf("%w: %s: permission denied (%s): grant the user access", datastore.ErrUnavailable, c.where(), pe.Message)
		}
		return fmt.Errorf("%s: %w", c.where(), err)
	}
	if !errors.As(err, new(*pgconn.ConnectError)) && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, mysql.ErrInvalidConn) ||
		strings.Contains(err.Error(), "conn closed")) {
		msg := err.Error()
		if c.Dialect == Postgres {
			msg = scrubConfig(msg, c)
		}
		return fmt.Errorf("%w: %s: %s (a network or server problem; nothing was changed by the failed step, retry)", datastore.ErrConnectionLost, c.where(), msg)
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, mysql.ErrInvalidConn) {
		msg := err.Error()
		if c.Dialect == Postgres {
			msg = scrubConfig(msg, c)
		}
		return fmt.Errorf("%w: cannot reach %s: %s (is the server running and the address right?)", datastore.ErrUnavailable, c.where(), msg)
	}
	return fmt.Errorf("%s: %w", c.where(), err)
}

func scrubConfig(msg string, c Config) string {
	if c.Postgres != nil && c.Postgres.Password != "" {
		msg = strings.ReplaceAll(msg, c.Postgres.Password, "REDACTED")
	}
	return msg
}

// columns lists the columns of the kine table; none when it does not exist.
func columns(ctx context.Context, q querier, dialect string) ([]string, error) {
	var query string
	switch dialect {
	case SQLite:
		query = `SELECT name FROM pragma_table_info('kine')`
	case MySQL:
		query = `SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'kine'`
	case Postgres:
		query = `SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'kine'`
	}
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		cols = append(cols, strings.ToLower(s))
	}
	return cols, rows.Err()
}

// tables lists the tables of the database, for the message when kine's is missing.
func tables(ctx context.Context, q querier, dialect string) []string {
	var query string
	switch dialect {
	case SQLite:
		query = `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`
	case MySQL:
		query = `SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()`
	case Postgres:
		query = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if rows.Scan(&s) == nil {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// checkSchema verifies kine's table. exists is false when there is no such table.
func checkSchema(ctx context.Context, q querier, c Config) (exists bool, err error) {
	cols, err := columns(ctx, q, c.Dialect)
	if err != nil {
		return false, classify(c, err)
	}
	if len(cols) == 0 {
		return false, nil
	}
	got := append([]string(nil), cols...)
	sort.Strings(got)
	want := append([]string(nil), kineColumns...)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		return true, fmt.Errorf("%w in %s: table kine has columns (%s), but vcsnap knows kine's table (kine up to v0.16.4) as (%s); upgrade vcsnap or migrate the database with the kine version that wrote it",
			ErrUnknownSchema, c.where(), strings.Join(cols, ", "), strings.Join(kineColumns, ", "))
	}
	return true, nil
}

// notKine is the error for a database without kine's table.
func notKine(ctx context.Context, q querier, c Config) error {
	t := tables(ctx, q, c.Dialect)
	what := "it has no tables"
	if len(t) > 0 {
		what = "its tables are " + strings.Join(t, ", ")
	}
	for _, name := range t {
		if name == "key_value" {
			what += " (key_value is the table of kine before 2020: start a current k3s or kine on it once to migrate it)"
		}
	}
	return fmt.Errorf("%w: %s has no table named kine, %s; point the URL at the database kine uses", ErrNotKine, c.where(), what)
}
