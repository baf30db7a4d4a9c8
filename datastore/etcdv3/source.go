package etcdv3

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// Source reads every key of an etcd v3 endpoint at one pinned revision, in pages.
type Source struct {
	cli    *clientv3.Client
	kine   bool
	prefix string
}

// OpenSource connects to the endpoint. On kine the default prefix is "/" because kine
// lists only prefixes and keeps its bookkeeping outside "/".
func OpenSource(ctx context.Context, c Config) (*Source, error) {
	cli, kine, err := dial(ctx, c)
	if err != nil {
		return nil, err
	}
	s := &Source{cli: cli, kine: kine, prefix: c.Prefix}
	if kine && s.prefix == "" {
		s.prefix = "/"
	}
	return s, nil
}

func (s *Source) Kind() string {
	if s.kine {
		return "kine"
	}
	return "etcd"
}

func (s *Source) Close() error { return s.cli.Close() }

func (s *Source) Count(ctx context.Context) (int64, error) {
	start, end := prefixRange(s.prefix)
	resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return -1, err
	}
	return resp.Count, nil
}

// Pages aim at this many bytes so memory stays flat whatever the values' sizes.
const (
	pageTargetBytes = 4 << 20
	minPage         = 16
	maxPage         = 2000
)

type page struct {
	kvs []*mvccpb.KeyValue
	err error
}

// Read pins the current revision and pages through every key at it. One page is fetched
// ahead while the previous one is being written out.
func (s *Source) Read(ctx context.Context, emit datastore.Emitter) (int64, error) {
	start, end := prefixRange(s.prefix)
	first, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	rev := first.Header.Revision

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan page, 2)
	go s.fetch(ctx, rev, start, end, pages)

	leases := map[int64]bool{}
	for p := range pages {
		if p.err != nil {
			if errors.Is(p.err, rpctypes.ErrCompacted) {
				return 0, fmt.Errorf("%w: revision %d: %v", datastore.ErrCompacted, rev, p.err)
			}
			return 0, fmt.Errorf("read at revision %d: %w", rev, p.err)
		}
		for _, kv := range p.kvs {
			if (s.kine && (datastore.IsBookkeeping(kv.Key) || string(kv.Key) == kineHealthKey)) ||
				(!s.kine && datastore.IsEtcdBookkeeping(kv.Key)) {
				// kine's health key is kine's own: it writes it whenever it starts.
				continue
			}
			if kv.Lease != 0 && !leases[kv.Lease] {
				l, err := s.lease(ctx, kv.Lease)
				if err != nil {
					return 0, err
				}
				if err := emit.Lease(l); err != nil {
					return 0, err
				}
				leases[kv.Lease] = true
			}
			rec := bundle.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
				ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
			if err := emit.Put(&rec); err != nil {
				return 0, err
			}
		}
	}
	return rev, ctx.Err()
}

func (s *Source) fetch(ctx context.Context, rev int64, key, end string, out chan<- page) {
	defer close(out)
	limit := int64(500)
	for {
		resp, err := s.cli.Get(ctx, key, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(limit))
		if err != nil {
			select {
			case out <- page{err: err}:
			case <-ctx.Done():
			}
			return
		}
		var bytes int64
		for _, kv := range resp.Kvs {
			bytes += int64(len(kv.Key) + len(kv.Value))
		}
		select {
		case out <- page{kvs: resp.Kvs}:
		case <-ctx.Done():
			return
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if bytes > 0 {
			limit = max(minPage, min(maxPage, limit*pageTargetBytes/bytes))
		}
	}
}

// lease captures a lease's remaining TTL. kine has no TimeToLive: its lease ID is the TTL
// in seconds, which is what it re-arms after a restart too.
func (s *Source) lease(ctx context.Context, id int64) (bundle.Lease, error) {
	if s.kine {
		return bundle.Lease{ID: id, TTL: id, GrantedTTL: id}, nil
	}
	resp, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return bundle.Lease{}, fmt.Errorf("lease %x: %w", id, err)
	}
	ttl := resp.TTL
	if ttl < 0 {
		// Expired since the pinned revision: the key is about to go; keep it short-lived.
		ttl = 0
	}
	return bundle.Lease{ID: id, TTL: ttl, GrantedTTL: resp.GrantedTTL}, nil
}
