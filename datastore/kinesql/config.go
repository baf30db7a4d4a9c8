// Package kinesql reads and writes kine's SQL table directly: SQLite (k3s's and vcluster's
// default state.db), MySQL/MariaDB and PostgreSQL. Reading the table is much faster than
// paging through kine's etcd API (one ordered query instead of a re-scan per page), and
// writing it lets a restore preserve leases and set the revision and the compaction mark
// exactly, with kine stopped.
//
// Kine's table (github.com/k3s-io/kine v0.16.4, pkg/drivers/{sqlite,mysql,pgsql}): every
// write inserts a row; id is the revision; the live value of a key (name) is its newest
// row unless deleted=1; created=1 marks the row that created the key (its create revision
// is then its id, otherwise the create_revision column); lease is the TTL in seconds;
// the row named compact_rev_key carries the compacted revision in prev_revision.
package kinesql

import (
	"errors"
	"fmt"
	"github.com/vcsnap/vcsnap/datastore"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// Dialects.
const (
	SQLite   = "sqlite"
	MySQL    = "mysql"
	Postgres = "postgres"
)

// PasswordEnv is the environment variable a SQL datastore's password is read from when
// the caller gives none.
const PasswordEnv = "VCSNAP_DATASTORE_PASSWORD"

// DefaultBusyTimeout is how long a SQLite read waits for a lock held by another process.
const DefaultBusyTimeout = 10 * time.Second

// defaultDatabase is the database kine uses when the DSN names none.
const defaultDatabase = "kubernetes"

// Config says how to reach one kine database.
type Config struct {
	Dialect string
	// Path is the SQLite database file.
	Path string
	// BusyTimeout bounds how long SQLite waits for another process's lock.
	BusyTimeout time.Duration
	// MySQL is the parsed MySQL DSN.
	MySQL *mysql.Config
	// Postgres is the parsed PostgreSQL connection config.
	Postgres *pgx.ConnConfig
	// Redacted is the URL with any password hidden, for messages.
	Redacted string
}

// IsURL reports whether raw names a datastore this package handles.
func IsURL(raw string) bool {
	for _, p := range []string{"sqlite://", "mysql://", "postgres://", "postgresql://"} {
		if strings.HasPrefix(raw, p) {
			return true
		}
	}
	return false
}

// ParseURL turns a datastore URL into a Config:
//
//	sqlite:///data/state.db[?busy-timeout=10s]
//	mysql://user[:pass]@tcp(host:3306)/db[?tls=true&...]   (vcluster's dataSource form)
//	postgres://user[:pass]@host:5432/db?sslmode=...
//
// password, when not empty, is used for MySQL and PostgreSQL and wins over one written in
// the URL (which works, but is logged as a warning: URLs end up in shell history and
// process lists). Without either, PostgreSQL's own PGPASSWORD and ~/.pgpass still apply.
func ParseURL(raw, password string) (Config, error) {
	c := Config{Redacted: redact(raw)}
	switch {
	case strings.HasPrefix(raw, "sqlite://"):
		c.Dialect = SQLite
		rest := strings.TrimPrefix(raw, "sqlite://")
		path, query, _ := strings.Cut(rest, "?")
		if path == "" {
			return c, fmt.Errorf("datastore URL %q has no file: write sqlite:///path/to/state.db", raw)
		}
		p, err := url.PathUnescape(path)
		if err != nil {
			return c, fmt.Errorf("datastore URL %q: %w", raw, err)
		}
		if c.Path, err = filepath.Abs(p); err != nil {
			return c, err
		}
		c.BusyTimeout = DefaultBusyTimeout
		q, err := url.ParseQuery(query)
		if err != nil {
			return c, fmt.Errorf("datastore URL %q: %w", raw, err)
		}
		for k, v := range q {
			switch {
			case k == "busy-timeout":
				d, err := time.ParseDuration(v[0])
				if err != nil || d < 0 {
					return c, fmt.Errorf("datastore URL option busy-timeout=%q: want a duration such as 30s", v[0])
				}
				c.BusyTimeout = d
			case strings.HasPrefix(k, "_") || k == "cache" || k == "mode":
				// kine's and the SQLite drivers' own options (_journal=WAL, cache=shared,
				// ...), as in k3s's and vcluster's DSN: they do not apply to vcsnap.
			default:
				return c, fmt.Errorf("unknown datastore URL option %q for sqlite (known: busy-timeout)", k)
			}
		}
	case strings.HasPrefix(raw, "mysql://"):
		c.Dialect = MySQL
		dsn := mysqlDSN(strings.TrimPrefix(raw, "mysql://"))
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return c, fmt.Errorf("datastore URL %s: %v; write mysql://user@tcp(host:3306)/database", c.Redacted, err)
		}
		if cfg.Passwd != "" {
			warnPasswordInURL(c.Redacted)
		}
		if password != "" {
			cfg.Passwd = password
		}
		if cfg.DBName == "" {
			cfg.DBName = defaultDatabase
		}
		if cfg.Timeout == 0 {
			cfg.Timeout = 10 * time.Second
		}
		cfg.ParseTime = false
		cfg.MultiStatements = false
		c.MySQL = cfg
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		c.Dialect = Postgres
		u, err := url.Parse(raw)
		if err != nil {
			return c, fmt.Errorf("datastore URL %s: %v; write postgres://user@host:5432/database?sslmode=...", c.Redacted, errors.Unwrap(err))
		}
		if _, set := u.User.Password(); set {
			warnPasswordInURL(c.Redacted)
		}
		// As kine does: no database means "kubernetes"; names fold to lower case.
		if u.Path == "" || u.Path == "/" {
			u.Path = "/" + defaultDatabase
		}
		u.Path = strings.ToLower(u.Path)
		cfg, err := pgx.ParseConfig(u.String())
		if err != nil {
			return c, fmt.Errorf("datastore URL %s: %v", c.Redacted, scrub(err, u))
		}
		if password != "" {
			cfg.Password = password
		}
		if cfg.ConnectTimeout == 0 {
			cfg.ConnectTimeout = 10 * time.Second
		}
		c.Postgres = cfg
	default:
		return c, fmt.Errorf("not a kine SQL datastore URL: %s (want sqlite://, mysql:// or postgres://)", c.Redacted)
	}
	return c, nil
}

// mysqlDSN accepts host:port without the tcp(...) wrapper too.
func mysqlDSN(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	if at < 0 {
		return dsn
	}
	rest := dsn[at+1:]
	slash := strings.Index(rest, "/")
	if slash < 0 {
		slash = len(rest)
	}
	addr := rest[:slash]
	if addr == "" || strings.Contains(addr, "(") {
		return dsn
	}
	return dsn[:at+1] + "tcp(" + addr + ")" + rest[slash:]
}

func warnPasswordInURL(redacted string) {
	slog.Warn("the datastore URL contains a password; prefer "+PasswordEnv+" or --datastore-password-file (URLs end up in shell history and process lists)",
		"datastore", redacted)
}

// scrub removes a password from an error text, should a library quote the URL.
func scrub(err error, u *url.URL) error {
	if err == nil || u == nil || u.User == nil {
		return err
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" {
		return err
	}
	s := err.Error()
	for _, p := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw)} {
		s = strings.ReplaceAll(s, p, "REDACTED")
	}
	return errors.New(s)
}

// redact hides the password of a datastore URL.
func redact(raw string) string { return datastore.RedactURL(raw) }

// Kind is the datastore kind recorded in bundles.
func (c Config) Kind() string { return "kine-" + c.Dialect }

// where names the database in messages.
func (c Config) where() string {
	switch c.Dialect {
	case SQLite:
		return c.Path
	case MySQL:
		return fmt.Sprintf("MySQL database %q at %s", c.MySQL.DBName, c.MySQL.Addr)
	case Postgres:
		return fmt.Sprintf("PostgreSQL database %q at %s", c.Postgres.Database, joinHostPort(c.Postgres.Host, c.Postgres.Port))
	}
	return c.Redacted
}

func joinHostPort(h string, p uint16) string {
	if strings.HasPrefix(h, "/") {
		return h
	}
	if strings.Contains(h, ":") {
		return "[" + h + "]:" + strconv.Itoa(int(p))
	}
	return h + ":" + strconv.Itoa(int(p))
}
