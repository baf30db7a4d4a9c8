package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vcsnap/vcsnap/datastore"
)

// etcd's defaults: at most 128 operations and 1.5 MiB per request. Batches stay well under.
const (
	maxTxnOps   = 128
	maxTxnBytes = 1 << 20
	// Keys under bumpPrefix are written repeatedly to raise the revision, then deleted and
	// compacted away. Each of up to bumpWriters writers owns one key. etcd applies about
	// 26k single Puts a second here with 128 in flight (14k with 16); kine serializes
	// its writes, so more than 16 only queue.
	bumpPrefix      = "/vcsnap/revision-bump/"
	bumpWriters     = 128
	kineBumpWriters = 16
	// kineHealthKey is created by kine itself on start (for the apiserver's health check).
	kineHealthKey = "/registry/health"
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
	// Granted leases are kept alive until the restore ends, so a lease with little time
	// left cannot expire before its last key is written; each then counts down its
	// captured TTL from the end of the restore.
	stopKeepAlive context.CancelFunc
	keepAliveCtx  context.Context

	// The batch being filled: its keys and values are copied into slab (the bundle
	// reader reuses its buffers) and sent as they are, without clientv3's string copies.
	batch      []*etcdserverpb.RequestOp
	slab       []byte
	batchBytes int
	work       chan []*etcdserverpb.RequestOp
	kv         etcdserverpb.KVClient
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
	t := &Target{cli: cli, kv: etcdserverpb.NewKVClient(cli.ActiveConnection()), kine: kine, prefix: c.Prefix,
		maxWrites: o.MaxRevisionWrites, leases: map[int64]clientv3.LeaseID{}}
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

// ReplacesOnlyPrefix: a forced restore of a prefix-limited snapshot replaces only the
// keys under that prefix (datastore.PrefixScoped).
func (t *Target) ReplacesOnlyPrefix() {}

func (t *Target) Prepare(ctx context.Context, opts datastore.PrepareOptions) (datastore.TargetState, error) {
	t.opts = opts
	if opts.Prefix != "" && (t.prefix == "" || (t.kine && t.prefix == "/")) {
		// A snapshot of keys under a prefix replaces those, never every other key.
		t.prefix = opts.Prefix
	}
	start, end := prefixRange(t.prefix)
	resp, err := t.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return t.state, fmt.Errorf("%w: inspect target: %v", datastore.ErrUnavailable, err)
	}
	t.state = datastore.TargetState{Revision: resp.Header.Revision, Keys: resp.Count}
	if t.kine && t.state.Keys > 0 && strings.HasPrefix(kineHealthKey, t.prefix) {
		// kine writes its health key when it starts: a fresh kine is empty all the same.
		h, err := t.cli.Get(ctx, kineHealthKey, clientv3.WithCountOnly())
		if err != nil {
			return t.state, fmt.Errorf("%w: inspect target: %v", datastore.ErrUnavailable, err)
		}
		t.state.Keys -= h.Count
	}
	if t.state.Keys > 0 && !opts.Force {
		return t.state, fmt.Errorf("%w: it holds %d keys; restore into an empty datastore, or pass --force to replace them",
			datastore.ErrTargetNotEmpty, t.state.Keys)
	}
	bump := max(opts.BumpRevision, 1)
	t.want = max(opts.SnapshotRevision, t.state.Revision) + bump
	// The revision is raised to t.want before the first key is written (see Begin), one
	// write per revision.
	if need := t.want - t.state.Revision; need > t.maxWrites {
		return t.state, fmt.Errorf("%w: the bundle's revision %d is %d above this target's %d; raising it through the etcd API costs one write per revision (%d here, over the limit of %d): allow it with --max-revision-writes=%d",
			datastore.ErrRevisionGap, opts.SnapshotRevision, opts.SnapshotRevision-t.state.Revision, t.state.Revision, need, t.maxWrites, need)
	}
	return t.state, nil
}

// Begin removes the target's keys (with Force), then raises the revision past
// max(snapshot, target) + bump before writing anything, so every restored key gets a mod
// revision (the objects' resourceVersions) above any revision a client can hold from
// before the restore: a stale client's optimistic-concurrency update then always
// conflicts, instead of matching a restored key's new, low mod revision by chance.
func (t *Target) Begin(ctx context.Context) error {
	if t.opts.Force && t.state.Keys > 0 {
		if err := t.wipe(ctx); err != nil {
			return fmt.Errorf("remove the target's existing keys: %w", err)
		}
	}
	began := time.Now()
	if err := t.raiseRevision(ctx); err != nil {
		return fmt.Errorf("raise the revision to %d: %w", t.want, explainWriteError(err, nil))
	}
	slog.Debug("raised the target's revision", "from", t.state.Revision, "to", t.want, "took", time.Since(began))
	wctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	writers := 4
	if t.kine {
		writers = 16 // single-key requests: keep more in flight
	}
	t.work = make(chan []*etcdserverpb.RequestOp, writers)
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
		err := write(ctx, func(wctx context.Context) (err error) {
			if len(ops) == 1 && t.kine {
				_, err = t.kv.Put(wctx, ops[0].GetRequestPut())
			} else {
				_, err = t.kv.Txn(wctx, &etcdserverpb.TxnRequest{Success: ops})
			}
			return rpctypes.Error(err)
		})
		if err != nil {
			err = explainWriteError(err, ops)
			t.fail(err)
		}
	}
}

var errAborted = errors.New("restore aborted")

// explainWriteError says what a refused write means for the person restoring: a target
// over its space quota, or a key too large for one request (ops is the refused batch).
func explainWriteError(err error, ops []*etcdserverpb.RequestOp) error {
	switch {
	case errors.Is(err, rpctypes.ErrNoSpace):
		return fmt.Errorf("%w: the target etcd is full (its space quota, --quota-backend-bytes, is reached) and refuses writes until an operator raises the quota or frees space (compact, defragment) and clears the alarm (etcdctl alarm disarm)", err)
	// etcd refuses a request over --max-request-bytes, or its gRPC server one over that
	// plus its overhead allowance, before reading it.
	case len(ops) > 0 && (errors.Is(err, rpctypes.ErrRequestTooLarge) ||
		(status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "larger than max"))):
		// A key too large for one request is alone in its batch (see Put).
		big := ops[0].GetRequestPut()
		return fmt.Errorf("%w: key %q (%d bytes with its value) is larger than the target etcd accepts in one request (its --max-request-bytes, 1.5 MiB by default): raise that limit on the target, or restore into SQLite or a SQL datastore, which take it",
			err, big.GetKey(), len(big.GetKey())+len(big.GetValue()))
	}
	return err
}

// writeTimeout bounds one write request.
const writeTimeout = 2 * time.Minute

// write issues one write request unless ctx is already done. The request itself is never
// cancelled: etcd may still apply a request whose client gave up, and such a write landing
// after Abort's wipe would leave keys behind. So a cancelled restore stops issuing writes
// and waits for the ones in flight (bounded by writeTimeout).
func write(ctx context.Context, do func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	return do(wctx)
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

func (t *Target) Lease(ctx context.Context, l datastore.Lease) error {
	ttl := max(l.TTL, 1)
	resp, err := t.cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("grant lease (TTL %ds): %w", ttl, err)
	}
	t.leases[l.ID] = resp.ID
	t.granted = append(t.granted, resp.ID)
	if t.kine {
		return nil // kine has no keep-alive; its TTLs count from each row's creation
	}
	if t.stopKeepAlive == nil {
		var kctx context.Context
		kctx, t.stopKeepAlive = context.WithCancel(context.WithoutCancel(ctx))
		t.keepAliveCtx = kctx
	}
	ch, err := t.cli.KeepAlive(t.keepAliveCtx, resp.ID)
	if err != nil {
		return fmt.Errorf("keep lease %x alive during the restore: %w", resp.ID, err)
	}
	go func() {
		for range ch { // the client needs its responses read
		}
	}()
	return nil
}

// endKeepAlives lets the restored leases count down from now.
func (t *Target) endKeepAlives() {
	if t.stopKeepAlive != nil {
		t.stopKeepAlive()
	}
}

func (t *Target) Put(ctx context.Context, kv *datastore.KeyValue) error {
	if err := t.failed(); err != nil {
		return err
	}
	put := &etcdserverpb.PutRequest{}
	if kv.Lease != 0 {
		id, ok := t.leases[kv.Lease]
		if !ok {
			return fmt.Errorf("key %q refers to unknown lease %d", kv.Key, kv.Lease)
		}
		put.Lease = int64(id)
	}
	size := len(kv.Key) + len(kv.Value)
	if len(t.batch) > 0 && (len(t.batch) >= maxTxnOps || t.batchBytes+size > maxTxnBytes || t.kine) {
		if err := t.flush(ctx); err != nil {
			return err
		}
	}
	if len(t.slab)+size > cap(t.slab) {
		t.slab = make([]byte, 0, max(size, maxTxnBytes))
	}
	n := len(t.slab)
	t.slab = append(append(t.slab, kv.Key...), kv.Value...)
	put.Key, put.Value = t.slab[n:n+len(kv.Key):n+len(kv.Key)], t.slab[n+len(kv.Key):len(t.slab):len(t.slab)]
	t.batch = append(t.batch, &etcdserverpb.RequestOp{Request: &etcdserverpb.RequestOp_RequestPut{RequestPut: put}})
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

// Commit finishes the writes and compacts at the final revision, so a watcher holding
// any older resourceVersion gets "compacted" (HTTP 410 from the apiserver) and re-lists
// instead of silently missing events. The revision was raised in Begin.
//
// kine ignores compaction requests through its etcd API unless its own periodic
// compaction is disabled, and then keeps the newest 1000 revisions anyway: there the old
// revisions stay readable until kine compacts on its own schedule (every 5 minutes by
// default). The kube-apiserver's watch cache still answers 410 to resourceVersions
// older than the restore, and because the keys were written above every old revision,
// a watch that bypasses the cache receives every restored key as a new event rather
// than silence.
func (t *Target) Commit(ctx context.Context) (int64, error) {
	defer t.endKeepAlives()
	began := time.Now()
	err := t.flush(ctx)
	t.stopWriters()
	slog.Debug("the last writes finished", "took", time.Since(began))
	if err == nil {
		err = t.failed()
	}
	if err != nil {
		return 0, err
	}
	final, err := t.revision(ctx)
	if err != nil {
		return 0, err
	}
	if final < t.want {
		return 0, fmt.Errorf("the target's revision is %d after the restore, below the required %d", final, t.want)
	}
	// Not WithCompactPhysical: the compaction takes effect when etcd applies it (reads and
	// watches below it fail as compacted from then on, and etcd resumes removing the old
	// revisions after a restart); waiting for their removal from the backend would only
	// add a second or more per 100k keys to the restore.
	if _, err := t.cli.Compact(ctx, final); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return 0, fmt.Errorf("compact at revision %d: %w", final, err)
	}
	slog.Debug("compacted", "revision", final, "took", time.Since(began))
	if t.kine {
		slog.Warn("kine does not compact on request through its etcd API: revisions from before the restore stay readable until kine's own periodic compaction; the kube-apiserver's watch cache answers 410 to older resourceVersions",
			"revision", final)
	}
	return final, nil
}

func (t *Target) revision(ctx context.Context) (int64, error) {
	resp, err := t.cli.Get(ctx, bumpPrefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// raiseRevision writes until the revision reaches t.want. Up to bumpWriters writers each
// update their own key under bumpPrefix until the revision is close enough that deleting
// the keys adds the rest: on etcd one DeleteRange (one revision), on kine one delete per
// key. On etcd the updates are plain Puts; on kine they are compare-and-swap transactions
// (the update shape kine supports: kine's plain Put of an existing key silently does
// nothing unless that key was the store's last write, so concurrent Puts of one key do
// not each add a revision there). It checks the revision really got there.
func (t *Target) raiseRevision(ctx context.Context) error {
	cur, err := t.revision(ctx)
	if err != nil {
		return err
	}
	if cur >= t.want {
		return nil
	}
	// Each key costs at least two writes (create and delete), so a small gap gets fewer.
	writers := bumpWriters
	if t.kine {
		writers = kineBumpWriters
	}
	n := min(int64(writers), max(1, (t.want-cur)/2))
	goal := t.want - n // on kine each key's deletion adds one
	if !t.kine {
		goal = t.want - 1 // on etcd one DeleteRange removes them all, for one revision
	}
	var (
		top  atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, n)
	)
	top.Store(cur)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%d", bumpPrefix, i)
		wg.Add(1)
		go func(key string) {
			defer wg.Done()
			if err := t.bumpKey(wctx, key, goal, &top); err != nil {
				errs <- err
				cancel()
			}
		}(keys[i])
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	if !t.kine {
		if _, err := t.cli.Delete(ctx, bumpPrefix, clientv3.WithPrefix()); err != nil {
			return fmt.Errorf("delete %s*: %w", bumpPrefix, err)
		}
	} else {
		for _, key := range keys {
			if err := t.deleteKey(ctx, key); err != nil {
				return fmt.Errorf("delete %s: %w", key, err)
			}
		}
	}
	final, err := t.revision(ctx)
	if err != nil {
		return err
	}
	if final < t.want {
		return fmt.Errorf("the revision reached only %d, want %d: the target did not apply every write", final, t.want)
	}
	return nil
}

// bumpKey creates key (or takes it over if it exists) and updates it until the store's
// revision, as seen in the responses, reaches goal. The key exists when it returns nil.
func (t *Target) bumpKey(ctx context.Context, key string, goal int64, top *atomic.Int64) error {
	raise := func(rev int64) {
		for {
			old := top.Load()
			if rev <= old || top.CompareAndSwap(old, rev) {
				return
			}
		}
	}
	if !t.kine {
		// etcd: every Put adds a revision, concurrent or not. Each writer puts its key at
		// least once, so the DeleteRange that ends the raise always deletes something.
		put := &etcdserverpb.PutRequest{Key: []byte(key)}
		for first := true; first || top.Load() < goal; first = false {
			var pr *etcdserverpb.PutResponse
			err := write(ctx, func(wctx context.Context) (err error) {
				pr, err = t.kv.Put(wctx, put)
				return rpctypes.Error(err)
			})
			if err != nil {
				return err
			}
			raise(pr.Header.Revision)
		}
		return nil
	}
	var modRev int64
	for modRev == 0 {
		resp, err := t.cli.Get(ctx, key)
		if err != nil {
			return err
		}
		raise(resp.Header.Revision)
		if len(resp.Kvs) > 0 {
			modRev = resp.Kvs[0].ModRevision
			break
		}
		// Always create the key, even when the goal is reached: its deletion is counted on.
		var tr *clientv3.TxnResponse
		err = write(ctx, func(wctx context.Context) (err error) {
			tr, err = t.cli.Txn(wctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).Then(clientv3.OpPut(key, "")).Commit()
			return err
		})
		if err != nil {
			return err
		}
		if tr.Succeeded {
			modRev = tr.Header.Revision
			raise(modRev)
		}
	}
	for top.Load() < goal {
		var tr *clientv3.TxnResponse
		err := write(ctx, func(wctx context.Context) (err error) {
			tr, err = t.cli.Txn(wctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
				Then(clientv3.OpPut(key, "")).Else(clientv3.OpGet(key)).Commit()
			return err
		})
		if err != nil {
			return err
		}
		if !tr.Succeeded {
			return fmt.Errorf("%s changed underneath the restore (is something else writing to the target?)", key)
		}
		modRev = tr.Header.Revision
		raise(modRev)
	}
	return nil
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
	t.endKeepAlives()
	if t.cancel != nil {
		t.fail(errAborted) // the writers skip what is still queued
		t.stopWriters()    // and the requests in flight finish before the wipe
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
