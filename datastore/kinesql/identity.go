package kinesql

import (
	"context"
	"fmt"

	"github.com/vcsnap/vcsnap/datastore"
)

// Identity names the database c reaches, whatever the URL's spelling: a SQLite file's
// device and inode (after following links), a PostgreSQL server instance (its start time)
// and database OID, a MySQL/MariaDB server (host name, port, data directory) and database.
func Identity(ctx context.Context, c Config) (datastore.Identity, error) {
	if c.Dialect == SQLite {
		return datastore.FileIdentity("sqlite", c.Path)
	}
	db, err := connectMode(ctx, c, true, false)
	if err != nil {
		return datastore.Identity{}, err
	}
	defer db.Close()
	var a, b, d string
	switch c.Dialect {
	case Postgres:
		err = db.QueryRowContext(ctx, `SELECT pg_postmaster_start_time()::text, current_setting('port'),
			(SELECT oid FROM pg_database WHERE datname = current_database())::text`).Scan(&a, &b, &d)
	case MySQL:
		var dir string
		err = db.QueryRowContext(ctx, `SELECT CONCAT(@@hostname, ':', @@port), @@datadir, DATABASE()`).Scan(&a, &dir, &d)
		b = dir
	default:
		return datastore.Identity{}, fmt.Errorf("unknown dialect %q", c.Dialect)
	}
	if err != nil {
		return datastore.Identity{}, classify(c, err)
	}
	return datastore.Identity{ID: c.Dialect + ":" + a + ":" + b + ":" + d,
		Describe: fmt.Sprintf("%s server %s, database %s", c.Dialect, a, d)}, nil
}
