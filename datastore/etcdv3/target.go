package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// etcd's defaults: at most 128 operations and 1.5 MiB per request. Batches stay well under.
const (
	maxTxnOps   = 128
	maxTxnBytes = 1 << 20
	// bumpKey is written repeatedly to raise the revision, then deleted and compacted away.
	bumpKey = "/vcsnap/revision-bump"
)

// DefaultMaxRevisionWrites bounds how many single writes a restore may spend raising the
// revision through the API (about 20k per second on etcd).
const DefaultMaxRevisionWrites = 2_000_000

// Target writes a bundle into an etcd v3 endpoint in batched transactions from several
// writers. kine accepts only single-operation requests, so there each key is one Put.
type Target struct {
	cli       *clientv3.Client
	kine      bool
	prefix    string
	maxWrites int64

	opts  datastore.PrepareOptions
	state datastore.TargetState
	want  int64 // the revision the target must end above

	leases  map[int64]clientv3.LeaseID
	granted []clientv3.LeaseID

	batch      []clientv3.Op
	batchBytes int
	work       chan []clientv3.Op
	wg         sync.WaitGroup
	cancel     context.CancelFunc
	stopOnce   sync.Once

	mu  sync.Mutex
	err error
}

// TargetOptions tune a Target.
type TargetOptions struct {
	// MaxRevisionWrites bounds the writes spent raising the revision; zero means the default.
	MaxRevisionWrites int64
}

// OpenTarget connects to the endpoint.
func OpenTarget(ctx context.Context, c Config, o TargetOptions) (*Target, error) {
	cli, kine, err := dial(ctx, c)
	if err != nil {
		return nil, err
	}
	t := &Target{cli: cli, kine: kine, prefix: c.Prefix, maxWrites: o.MaxRevisionWrites, leases: map[int64]clientv3.LeaseID{}}
	if kine && t.prefix == "" {
		t.prefix = "/"
	}
	if t.maxWrites == 0 {
		t.maxWrites = DefaultMaxRevisionWrites
	}
	return t, nil
}

func (t *Target) Kind() string {
	if t.kine {
		return "kine"
	}
	return "etcd"
}

func (t *Target) Close() error { return t.cli.Close() }

func (t *Target) Prepare(ctx context.Context, opts datastore.PrepareOptions) (datastore.TargetState, error) {
	t.opts = opts
	start, end := prefixRange(t.prefix)
	resp, err := t.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return t.state, fmt.Errorf("%w: inspect target: %v", datastore.ErrUnavailable, err)
	}
	t.state = datastore.TargetState{Revision: resp.Header.Revision, Keys: resp.Count}
	if t.state.Keys > 0 && !opts.Force {
		return t.state, fmt.Errorf("%w: it holds %d keys; restore into an empty datastore, or pass --force to replace them",
			datastore.ErrTargetNotEmpty, t.state.Keys)
	}
	bump := max(opts.BumpRevision, 1)
	t.want = max(opts.SnapshotRevision, t.state.Revision) + bump
	// Every write request moves the revision by one; count what the restore itself adds.
	writes := (opts.Keys + maxTxnOps - 1) / maxTxnOps
	if t.kine {
		writes = opts.Keys
	}
	if opts.Force && t.state.Keys > 0 {
		writes++
	}
	if need := t.want - (t.state.Revision + writes); need > t.maxWrites {
		return t.state, fmt.Errorf("%w: the bundle's revision %d is %d above this target's %d; raising it through the etcd API costs one write per revision (%d here, over the limit of %d): allow it with --max-revision-writes=%d",
			datastore.ErrRevisionGap, opts.SnapshotRevision, opts.SnapshotRevision-t.state.Revision, t.state.Revision, need, t.maxWrites, need)
	}
	return t.state, nil
}

func (t *Target) Begin(ctx context.Context) error {
	if t.opts.Force && t.state.Keys > 0 {
		if err := t.wipe(ctx); err != nil {
			return fmt.Errorf("remove the target's existing keys: %w", err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	writers := 4
	if t.kine {
		writers = 16 // single-key requests: keep more in flight
	}
	t.work = make(chan []clientv3.Op, writers)
	for range writers {
		t.wg.Add(1)
		go t.writer(wctx)
	}
	return nil
}

func (t *Target) writer(ctx context.Context) {
	defer t.wg.Done()
	for ops := range t.work {
		if t.failed() != nil {
			continue // drain
		}
		var err error
		if len(ops) == 1 && t.kine {
			_, err = t.cli.Do(ctx, ops[0])
		} else {
			_, err = t.cli.Txn(ctx).Then(ops...).Commit()
		}
		if err != nil {
			if errors.Is(err, rpctypes.ErrRequestTooLarge) {
				err = fmt.Errorf("%w: a key in this batch (first %q) is larger than the target's --max-request-bytes", err, ops[0].KeyBytes())
			}
			t.fail(err)
		}
	}
}

// stopWriters lets the writers finish the queued batches and waits for them.
func (t *Target) stopWriters() {
	t.stopOnce.Do(func() {
		close(t.work)
		t.wg.Wait()
	})
}

func (t *Target) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		t.cancel()
	}
}

func (t *Target) failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *Target) Lease(ctx context.Context, l bundle.Lease) error {
	ttl := max(l.TTL, 1)
	resp, err := t.cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("grant lease (TTL %ds): %w", ttl, err)
	}
	t.leases[l.ID] = resp.ID
	t.granted = append(t.granted, resp.ID)
	return nil
}

func (t *Target) Put(ctx context.Context, kv *bundle.KeyValue) error {
	if err := t.failed(); err != nil {
		return err
	}
	var opts []clientv3.OpOption
	if kv.Lease != 0 {
		id, ok := t.leases[kv.Lease]
		if !ok {
			return fmt.Errorf("key %q refers to unknown lease %d", kv.Key, kv.Lease)
		}
		opts = append(opts, clientv3.WithLease(id))
	}
	size := len(kv.Key) + len(kv.Value)
	if len(t.batch) > 0 && (len(t.batch) >= maxTxnOps || t.batchBytes+size > maxTxnBytes || t.kine) {
		if err := t.flush(ctx); err != nil {
			return err
		}
	}
	// string() copies: the record's slices are reused by the bundle reader.
	t.batch = append(t.batch, clientv3.OpPut(string(kv.Key), string(kv.Value), opts...))
	t.batchBytes += size
	return nil
}

func (t *Target) flush(ctx context.Context) error {
	if len(t.batch) == 0 {
		return nil
	}
	select {
	case t.work <- t.batch:
	case <-ctx.Done():
		return ctx.Err()
	}
	t.batch, t.batchBytes = nil, 0
	return t.failed()
}

// Commit finishes the writes, raises the revision past max(snapshot, previous target) +
// bump, deletes the helper key and compacts at the final revision, so a watcher holding
// any older resourceVersion gets "compacted" (HTTP 410 from the apiserver) and re-lists
// instead of silently missing events.
func (t *Target) Commit(ctx context.Context) (int64, error) {
	err := t.flush(ctx)
	t.stopWriters()
	if err == nil {
		err = t.failed()
	}
	if err != nil {
		return 0, err
	}
	cur, err := t.revision(ctx)
	if err != nil {
		return 0, err
	}
	if err := t.raiseRevision(ctx, cur); err != nil {
		return 0, fmt.Errorf("raise the revision: %w", err)
	}
	if err := t.deleteKey(ctx, bumpKey); err != nil {
		return 0, err
	}
	final, err := t.revision(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := t.cli.Compact(ctx, final, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return 0, fmt.Errorf("compact at revision %d: %w", final, err)
	}
	return final, nil
}

func (t *Target) revision(ctx context.Context) (int64, error) {
	resp, err := t.cli.Get(ctx, bumpKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// raiseRevision writes bumpKey until the revision reaches t.want-1 (deleting bumpKey
// afterwards adds the last one).
func (t *Target) raiseRevision(ctx context.Context, cur int64) error {
	need := t.want - 1 - cur
	if need <= 0 {
		return nil
	}
	const writers = 16
	var (
		wg   sync.WaitGroup
		next = make(chan struct{}, writers)
		errs = make(chan error, writers)
	)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if _, err := t.cli.Put(wctx, bumpKey, ""); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
	for i := int64(0); i < need && wctx.Err() == nil; i++ {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// deleteKey deletes one key; on kine only the apiserver's txn shape is supported.
func (t *Target) deleteKey(ctx context.Context, key string) error {
	if !t.kine {
		_, err := t.cli.Delete(ctx, key)
		return err
	}
	resp, err := t.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	_, err = t.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	return err
}

// wipe removes every key in the target's range.
func (t *Target) wipe(ctx context.Context) error {
	start, end := prefixRange(t.prefix)
	if !t.kine {
		_, err := t.cli.Delete(ctx, start, clientv3.WithRange(end))
		return err
	}
	for {
		resp, err := t.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(1000))
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		for _, kv := range resp.Kvs {
			if err := t.deleteKey(ctx, string(kv.Key)); err != nil {
				return err
			}
		}
	}
}

// Abort stops the writers, removes every key written and revokes the leases granted, so
// the target is empty again. It runs even when ctx is already cancelled.
func (t *Target) Abort(ctx context.Context) error {
	if t.cancel != nil {
		t.cancel()
		t.stopWriters()
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	err := t.wipe(actx)
	if !t.kine {
		for _, id := range t.granted {
			if _, rerr := t.cli.Revoke(actx, id); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) && err == nil {
				err = rerr
			}
		}
	}
	return err
}
