package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
)

// leaseRefresh is how long a lease's captured TTL is trusted before it is asked again
// (keep-alives can extend it); in between the TTL counts down from the capture.
const leaseRefresh = time.Minute

type cachedLease struct {
	l  datastore.Lease
	at time.Time
}

// Follow watches every key under the source's prefix from after+1, without previous
// values, with progress notifications (and a progress request every progressEvery) so
// that an idle stream still reports how far it got. See datastore.ChangeSource.
func (s *Source) Follow(ctx context.Context, after int64, progressEvery time.Duration, deliver datastore.DeliverFunc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start, end := prefixRange(s.prefix)
	wch := s.cli.Watch(ctx, start, clientv3.WithRange(end), clientv3.WithRev(after+1), clientv3.WithProgressNotify())
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	leases := map[int64]cachedLease{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if err := s.cli.RequestProgress(ctx); err != nil && ctx.Err() == nil {
				slog.Warn("the datastore did not answer a watch progress request", "error", err)
			}
		case resp, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("%w: the watch stream ended", datastore.ErrUnavailable)
			}
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				return fmt.Errorf("%w: the watch from revision %d needs revisions the datastore compacted away (compacted up to %d)",
					datastore.ErrCompacted, after+1, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("%w: watch: %v", datastore.ErrUnavailable, err)
			}
			if resp.IsProgressNotify() {
				// Reported also when the revision did not move: an idle stream that
				// answers is healthy, one that says nothing is not.
				after = max(after, resp.Header.Revision)
				if err := deliver(nil, after); err != nil {
					return err
				}
				continue
			}
			if len(resp.Events) == 0 {
				continue // the Created response
			}
			changes := make([]datastore.Change, 0, len(resp.Events))
			for _, ev := range resp.Events {
				kv := ev.Kv
				after = max(after, kv.ModRevision)
				if s.skip(kv.Key) {
					continue
				}
				c := datastore.Change{KV: datastore.KeyValue{Key: kv.Key, ModRevision: kv.ModRevision}}
				if ev.Type == mvccpb.DELETE {
					c.Delete = true
				} else {
					c.KV = datastore.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
						ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
					if c.KV.Value == nil {
						c.KV.Value = []byte{}
					}
					if kv.Lease != 0 {
						l, err := s.followLease(ctx, leases, kv.Lease)
						if err != nil {
							return err
						}
						c.Lease = l
					}
				}
				changes = append(changes, c)
			}
			if err := deliver(changes, after); err != nil {
				return err
			}
		}
	}
}

// skip leaves out what a full read leaves out: the datastore's own bookkeeping.
func (s *Source) skip(key []byte) bool {
	if s.kine {
		return datastore.IsBookkeeping(key) || string(key) == kineHealthKey
	}
	return datastore.IsEtcdBookkeeping(key)
}

func (s *Source) followLease(ctx context.Context, cache map[int64]cachedLease, id int64) (datastore.Lease, error) {
	now := time.Now()
	if c, ok := cache[id]; ok && now.Sub(c.at) < leaseRefresh {
		l := c.l
		l.TTL = max(0, l.TTL-int64(now.Sub(c.at)/time.Second))
		return l, nil
	}
	l, err := s.lease(ctx, id)
	if err != nil {
		return l, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	cache[id] = cachedLease{l: l, at: now}
	if len(cache) > 10000 {
		clear(cache) // leases come and go; keep the cache small
	}
	return l, nil
}

// Revision is the endpoint's current revision.
func (s *Source) Revision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, "\x00", clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	return resp.Header.Revision, nil
}

// CheckFollow reports (ErrCompacted) when the revisions after `after` can no longer be
// followed because the datastore compacted them away.
func (s *Source) CheckFollow(ctx context.Context, after int64) error {
	cur, err := s.Revision(ctx)
	if err != nil || after >= cur {
		return err
	}
	_, err = s.cli.Get(ctx, "\x00", clientv3.WithLimit(1), clientv3.WithKeysOnly(), clientv3.WithRev(after+1))
	if errors.Is(err, rpctypes.ErrCompacted) || (err != nil && strings.Contains(err.Error(), "compacted")) {
		return fmt.Errorf("%w: revision %d: %v", datastore.ErrCompacted, after+1, err)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	return nil
}
