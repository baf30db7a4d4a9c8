// Package open turns datastore URLs into sources and targets of the right kind:
//
//	etcd://host:2379[,host2:2379]          etcd or kine over the etcd v3 API
//	etcds://host:2379?cacert=&cert=&key=   the same over TLS
//	unix:///data/kine.sock                 kine's unix socket
//	sqlite:///data/state.db                kine's SQLite database, read directly
//	mysql://user@tcp(host:3306)/db         kine's table in MySQL/MariaDB
//	postgres://user@host:5432/db?sslmode=  kine's table in PostgreSQL
//	etcd-dir:///data/etcd                  an offline etcd data directory
//
// SQL passwords come from Options.Password, else $VCSNAP_DATASTORE_PASSWORD; one written
// in the URL (as vcluster's dataSource has it) works too, with a warning, and is never
// printed.
package open

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcddir"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
	"github.com/vcsnap/vcsnap/datastore/kinesql"
)

// PasswordEnv is the environment variable SQL datastore passwords are read from.
const PasswordEnv = kinesql.PasswordEnv

// Options apply to every kind of datastore.
type Options struct {
	// MaxRevisionWrites bounds the writes an API target may spend raising its revision.
	MaxRevisionWrites int64
	// Password is the password of a MySQL or PostgreSQL datastore; empty means
	// $VCSNAP_DATASTORE_PASSWORD (or none).
	Password string
}

func (o Options) password() string {
	if o.Password != "" {
		return o.Password
	}
	return os.Getenv(PasswordEnv)
}

// ReadPasswordFile reads a password file: its content without the trailing newline.
func ReadPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("datastore password file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("datastore password file %s is empty", path)
	}
	return pw, nil
}

// Source opens a datastore to read from.
func Source(ctx context.Context, raw string, o Options) (datastore.Source, error) {
	scheme, err := schemeOf(raw)
	if err != nil {
		return nil, datastore.BadURL(err)
	}
	switch scheme {
	case "etcd", "etcds", "unix":
		c, err := etcdv3.ParseURL(raw)
		if err != nil {
			return nil, datastore.BadURL(err)
		}
		return etcdv3.OpenSource(ctx, c)
	case "sqlite", "mysql", "postgres", "postgresql":
		c, err := kinesql.ParseURL(raw, o.password())
		if err != nil {
			return nil, err
		}
		return kinesql.OpenSource(ctx, c)
	case "etcd-dir":
		c, err := etcddir.ParseURL(raw)
		if err != nil {
			return nil, datastore.BadURL(err)
		}
		return etcddir.OpenSource(ctx, c)
	}
	return nil, datastore.BadURL(unsupported(scheme))
}

// Target opens a datastore to restore into.
func Target(ctx context.Context, raw string, o Options) (datastore.Target, error) {
	scheme, err := schemeOf(raw)
	if err != nil {
		return nil, datastore.BadURL(err)
	}
	switch scheme {
	case "etcd", "etcds", "unix":
		c, err := etcdv3.ParseURL(raw)
		if err != nil {
			return nil, datastore.BadURL(err)
		}
		return etcdv3.OpenTarget(ctx, c, etcdv3.TargetOptions{MaxRevisionWrites: o.MaxRevisionWrites})
	case "sqlite":
		c, err := kinesql.ParseURL(raw, o.password())
		if err != nil {
			return nil, err
		}
		return kinesql.OpenSQLiteTarget(ctx, c)
	case "mysql", "postgres", "postgresql":
		c, err := kinesql.ParseURL(raw, o.password())
		if err != nil {
			return nil, err
		}
		return kinesql.OpenServerTarget(ctx, c)
	case "etcd-dir":
		c, err := etcddir.ParseURL(raw)
		if err != nil {
			return nil, datastore.BadURL(err)
		}
		return etcddir.OpenTarget(ctx, c)
	}
	return nil, datastore.BadURL(unsupported(scheme))
}

// Identity names the datastore a URL reaches independently of its spelling, so that two
// URLs of one datastore are recognised as one (see datastore.Identity).
func Identity(ctx context.Context, raw string, o Options) (datastore.Identity, error) {
	scheme, err := schemeOf(raw)
	if err != nil {
		return datastore.Identity{}, datastore.BadURL(err)
	}
	switch scheme {
	case "etcd", "etcds", "unix":
		c, err := etcdv3.ParseURL(raw)
		if err != nil {
			return datastore.Identity{}, datastore.BadURL(err)
		}
		return etcdv3.Identity(ctx, c)
	case "sqlite", "mysql", "postgres", "postgresql":
		c, err := kinesql.ParseURL(raw, o.password())
		if err != nil {
			return datastore.Identity{}, err
		}
		return kinesql.Identity(ctx, c)
	case "etcd-dir":
		c, err := etcddir.ParseURL(raw)
		if err != nil {
			return datastore.Identity{}, datastore.BadURL(err)
		}
		return datastore.FileIdentity("etcd-dir", c.Dir)
	}
	return datastore.Identity{}, datastore.BadURL(unsupported(scheme))
}

const schemes = "etcd://host:port, etcds://host:port?cacert=..., unix:///path/kine.sock, sqlite:///path/state.db, mysql://user@tcp(host:3306)/db, postgres://user@host:5432/db?sslmode=..., or etcd-dir:///path/etcd"

func schemeOf(raw string) (string, error) {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", fmt.Errorf("datastore URL %q has no scheme: use %s", Redact(raw), schemes)
	}
	return raw[:i], nil
}

func unsupported(scheme string) error {
	return fmt.Errorf("unsupported datastore scheme %q: use %s", scheme, schemes)
}

// Redact hides a password in a datastore URL so it can be logged.
func Redact(raw string) string { return datastore.RedactURL(raw) }
