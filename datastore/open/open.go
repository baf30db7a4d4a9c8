// Package open turns datastore URLs into sources and targets of the right kind.
package open

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/etcdv3"
)

// Options apply to every kind of datastore.
type Options struct {
	// MaxRevisionWrites bounds the writes an API target may spend raising its revision.
	MaxRevisionWrites int64
}

// Source opens a datastore to read from.
func Source(ctx context.Context, raw string, o Options) (datastore.Source, error) {
	scheme, err := schemeOf(raw)
	if err != nil {
		return nil, err
	}
	switch scheme {
	case "etcd", "etcds", "unix":
		c, err := etcdv3.ParseURL(raw)
		if err != nil {
			return nil, err
		}
		return etcdv3.OpenSource(ctx, c)
	}
	return nil, unsupported(scheme)
}

// Target opens a datastore to restore into.
func Target(ctx context.Context, raw string, o Options) (datastore.Target, error) {
	scheme, err := schemeOf(raw)
	if err != nil {
		return nil, err
	}
	switch scheme {
	case "etcd", "etcds", "unix":
		c, err := etcdv3.ParseURL(raw)
		if err != nil {
			return nil, err
		}
		return etcdv3.OpenTarget(ctx, c, etcdv3.TargetOptions{MaxRevisionWrites: o.MaxRevisionWrites})
	}
	return nil, unsupported(scheme)
}

func schemeOf(raw string) (string, error) {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", fmt.Errorf("datastore URL %q has no scheme: use etcd://host:port, etcds://host:port?cacert=..., or unix:///path/kine.sock", Redact(raw))
	}
	return raw[:i], nil
}

func unsupported(scheme string) error {
	return fmt.Errorf("unsupported datastore scheme %q: use etcd://, etcds:// or unix://", scheme)
}

// Redact hides a password in a datastore URL so it can be logged.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if at := strings.LastIndex(raw, "@"); at > 0 {
			if i := strings.Index(raw, "://"); i > 0 && i < at {
				return raw[:i+3] + "REDACTED" + raw[at:]
			}
		}
		return raw
	}
	return u.Redacted()
}
