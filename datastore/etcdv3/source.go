package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
)

// Source reads every key of an etcd v3 endpoint at one pinned revision, in pages.
type Source struct {
	cli    *clientv3.Client
	kine   bool
	prefix string
	// asked is the prefix the URL limited the read to ("" for every key), recorded in
	// the bundle so a restore replaces only keys under it.
	asked string
}

// OpenSource connects to the endpoint. On kine the default prefix is "/" because kine
// lists only prefixes and keeps its bookkeeping outside "/".
func OpenSource(ctx context.Context, c Config) (*Source, error) {
	cli, kine, err := dial(ctx, c)
	if err != nil {
		return nil, err
	}
	s := &Source{cli: cli, kine: kine, prefix: c.Prefix, asked: c.Prefix}
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

// Prefix is the key prefix the URL limited the read to; empty means every key.
func (s *Source) Prefix() string { return s.asked }

func (s *Source) Count(ctx context.Context) (int64, error) {
	start, end := prefixRange(s.prefix)
	resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return -1, err
	}
	return resp.Count, nil
}

// Pages aim at pageTargetBytes so memory stays flat whatever the values' sizes (a var
// so that tests can make pages of a few keys).
var pageTargetBytes int64 = 1 << 20

const (
	minPage = 16
	maxPage = 2000
)

type page struct {
	kvs []*mvccpb.KeyValue
	err error
}

// Read pins the current revision and pages through every key at it. One page is fetched
// ahead while the previous one is being written out.
func (s *Source) Read(ctx context.Context, emit datastore.Emitter) (int64, error) {
	start, end := prefixRange(s.prefix)
	// On etcd a one-key Get pins the revision; a ranged one would count the whole range.
	firstOpts := []clientv3.OpOption{clientv3.WithKeysOnly()}
	if s.kine {
		firstOpts = append(firstOpts, clientv3.WithRange(end), clientv3.WithLimit(1))
	}
	first, err := s.cli.Get(ctx, start, firstOpts...)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	rev := first.Header.Revision

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan page, 1)
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
			rec := datastore.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
				ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
			if err := emit.Put(&rec); err != nil {
				return 0, err
			}
		}
	}
	return rev, ctx.Err()
}

// fetch pages through [key, end) at rev. etcd counts every key from a request's start to
// its range end whatever the limit (treeIndex.Revisions walks the whole range for the
// response's Count), so paging with the range's own end costs time quadratic in the keys:
// minutes of server CPU at a million keys. On etcd each page therefore asks for a range
// that ends at the successor of a prefix of its first key, as long as a page: a page that
// comes back with more keys than asked for lengthens the prefix (a narrower range), a
// page that empties its range with few keys shortens it. kine takes only prefix ranges
// and pages with the range's end.
func (s *Source) fetch(ctx context.Context, rev int64, key, end string, out chan<- page) {
	defer close(out)
	limit := int64(500)
	depth := len(s.prefix) + 1 // bytes of the first key whose successor ends the page
	var requests, walked int64
	defer func() { slog.Debug("read pages", "requests", requests, "keysWalked", walked) }()
	for {
		to := end
		if !s.kine && requests > 0 {
			to = pageEnd(key, depth, end)
		}
		resp, err := s.cli.Get(ctx, key, clientv3.WithRange(to), clientv3.WithRev(rev), clientv3.WithLimit(limit))
		if err != nil {
			select {
			case out <- page{err: err}:
			case <-ctx.Done():
			}
			return
		}
		requests++
		walked += resp.Count
		var bytes int64
		for _, kv := range resp.Kvs {
			bytes += int64(len(kv.Key) + len(kv.Value))
		}
		if len(resp.Kvs) > 0 {
			select {
			case out <- page{kvs: resp.Kvs}:
			case <-ctx.Done():
				return
			}
		}
		switch {
		case resp.More && len(resp.Kvs) > 0:
			// Too wide: narrow to at least the prefix this page's keys share, plus one byte.
			first, last := resp.Kvs[0].Key, resp.Kvs[len(resp.Kvs)-1].Key
			key = string(last) + "\x00"
			depth = max(depth+1, commonPrefix(first, last)+1)
		case to == end:
			return
		default:
			key = to
			// Past the end of a clump (one namespace's keys, say) or nearly: widen by one
			// byte. Widening to the enclosing path segment at once walked the rest of that
			// segment whenever the next clump was small: 31 keys walked per key read at 1M
			// keys, against 6-11 this way (more requests, each walking little).
			if resp.Count < limit/8 && depth > 1 {
				depth--
			}
		}
		if bytes > 0 {
			limit = max(minPage, min(maxPage, limit*pageTargetBytes/bytes))
		}
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// pageEnd is the successor of key's first depth bytes (the end of the range of keys with
// that prefix), capped at end; "\x00" as end means no end, as in etcd.
func pageEnd(key string, depth int, end string) string {
	p := []byte(key[:min(depth, len(key))])
	for len(p) > 0 && p[len(p)-1] == 0xff {
		p = p[:len(p)-1]
	}
	if len(p) == 0 {
		return end
	}
	p[len(p)-1]++
	if to := string(p); end == "\x00" || to < end {
		return to
	}
	return end
}

// lease captures a lease's remaining TTL. kine has no TimeToLive: its lease ID is the TTL
// in seconds, which is what it re-arms after a restart too.
func (s *Source) lease(ctx context.Context, id int64) (datastore.Lease, error) {
	if s.kine {
		return datastore.Lease{ID: id, TTL: id, GrantedTTL: id}, nil
	}
	resp, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return datastore.Lease{}, fmt.Errorf("lease %x: %w", id, err)
	}
	ttl := resp.TTL
	if ttl < 0 {
		// Expired since the pinned revision: the key is about to go; keep it short-lived.
		ttl = 0
	}
	return datastore.Lease{ID: id, TTL: ttl, GrantedTTL: resp.GrantedTTL}, nil
}
