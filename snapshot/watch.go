package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	Datastore        string
	DatastoreOptions open.Options
	// Prefix is the store prefix URL the chains are written under (file:///b/vc1/).
	Prefix string
	// FullEvery is how often a new full bundle is taken (the chain goes on from it);
	// DeltaEvery how often the changes since the last bundle are cut into a delta.
	FullEvery, DeltaEvery time.Duration
	// DeltaMaxBytes cuts a delta early once this many key and value bytes are pending.
	DeltaMaxBytes int64
	Source        bundle.Source
	Encrypt       encrypt.Recipients
	Tool          string
	// OnBundle is told about every bundle stored (logs, tests).
	OnBundle func(WatchEvent)
	// LockTTL is how long this watcher's claim on the prefix lasts without renewal
	// (DefaultWatchLockTTL when zero): a second watcher of the prefix waits, and takes
	// over once a watcher that died has not renewed its claim for this long.
	LockTTL time.Duration
}

// WatchEvent describes one bundle snapshot watch stored.
type WatchEvent struct {
	URL      string           `json:"url"`
	Manifest *bundle.Manifest `json:"manifest"`
	Reason   string           `json:"reason,omitempty"`
}

// Defaults of snapshot watch.
const (
	DefaultFullEvery     = 6 * time.Hour
	DefaultDeltaEvery    = 5 * time.Second
	DefaultDeltaMaxBytes = 8 << 20
)

// Watch keeps a chain of bundles under the prefix current until ctx ends: a full
// bundle, then a delta bundle every DeltaEvery with every change since the previous
// bundle, and a new full bundle every FullEvery. It continues the newest chain under the
// prefix when the datastore still holds every revision after it, and starts a new chain
// (with a full bundle, saying why) otherwise, or when the watch falls so far behind that
// the datastore compacted revisions it had not read yet. When ctx ends it stores the
// changes it holds as a last delta and returns nil.
func Watch(ctx context.Context, o WatchOptions) error {
	if o.FullEvery <= 0 {
		o.FullEvery = DefaultFullEvery
	}
	if o.DeltaEvery <= 0 {
		o.DeltaEvery = DefaultDeltaEvery
	}
	if o.DeltaMaxBytes <= 0 {
		o.DeltaMaxBytes = DefaultDeltaMaxBytes
	}
	loc, err := storage.Open(ctx, o.Prefix)
	if err != nil {
		return err
	}
	prefix := storage.Folder(loc.Name)
	w := &watcher{o: o, store: loc.Store, prefix: prefix, prefixURL: o.Prefix}
	if !o.Encrypt.Empty() {
		if w.wopts.Encrypt, w.wopts.Encryption, err = o.Encrypt.Writer(); err != nil {
			return fmt.Errorf("encryption: %w", err)
		}
	}
	w.wopts.Tool = o.Tool
	if w.fullSrc, err = open.Source(ctx, o.Datastore, o.DatastoreOptions); err != nil {
		return err
	}
	defer w.fullSrc.Close()
	src, err := open.Source(ctx, o.Datastore, o.DatastoreOptions)
	if err != nil {
		return err
	}
	defer src.Close()
	var ok bool
	if w.follow, ok = src.(datastore.ChangeSource); !ok {
		return fmt.Errorf("a %s datastore has no history to follow: snapshot watch needs etcd, kine, or kine's SQL database", src.Kind())
	}
	if w.o.Source.Datastore == "" {
		w.o.Source.Datastore = src.Kind()
	}
	return w.runLocked(ctx, loc.Store, prefix)
}

// runLocked runs the watcher while it holds the prefix's lock (see lease), renewing it
// every third of its TTL, and gives it up when it stops.
func (w *watcher) runLocked(ctx context.Context, s storage.Store, folder string) error {
	ttl := w.o.LockTTL
	if ttl <= 0 {
		ttl = DefaultWatchLockTTL
	}
	ls := newLease(s, folder, ttl)
	if err := ls.acquire(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		ls.release(rctx)
	}()
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if err := ls.renew(wctx); errors.Is(err, ErrLockLost) {
					cancel(err)
					return
				} else if err != nil && wctx.Err() == nil {
					slog.Warn("could not renew the watch lock; retrying", "error", err)
				}
			}
		}
	}()
	err := w.run(wctx)
	if cause := context.Cause(wctx); errors.Is(cause, ErrLockLost) {
		return cause
	}
	return err
}

type watcher struct {
	o         WatchOptions
	wopts     bundle.WriterOptions
	store     storage.Store
	prefix    string
	prefixURL string
	fullSrc   datastore.Source
	follow    datastore.ChangeSource

	chain    string
	lastCut  int64     // the revision the newest bundle of the chain ends at
	lastFull time.Time // when the chain's newest full bundle was taken
	boundary int64     // a full bundle was taken at this revision: the next delta ends there
	lastName time.Time

	mu      sync.Mutex
	pending []datastore.Change
	// history keeps the changes cut into deltas while a full bundle is being taken, for
	// the bridge delta from it (see continueFrom).
	history     []datastore.Change
	keepHistory bool
	bytes       int64
	upTo        int64
	full        chan struct{} // signalled when pending reaches DeltaMaxBytes
	// heard is when the change stream last reported (changes or progress): a stream
	// that goes quiet means the datastore is down or unreachable, and the watcher says so
	// instead of looking healthy while it captures nothing.
	heard time.Time
}

func (w *watcher) run(ctx context.Context) error {
	w.full = make(chan struct{}, 1)
	if err := w.resume(ctx); err != nil {
		return err
	}
	var lastWarn time.Time
	for {
		if w.chain == "" {
			if err := w.newChain(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		err := w.followChain(ctx, &lastWarn)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, datastore.ErrCompacted):
			slog.Warn("the watch fell behind: the datastore compacted revisions it had not read; starting a new chain with a full bundle",
				"chain", w.chain, "lastRevision", w.lastCut, "error", err)
			w.chain = ""
		case errors.Is(err, datastore.ErrUnavailable):
			slog.Warn("lost the datastore's change stream; reconnecting", "error", err)
			w.checkSilence(&lastWarn) // a stream that fails at once never reaches followChain's ticker
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
		default:
			return err
		}
	}
}

// resume continues the newest chain under the prefix if the datastore still holds
// every revision after its last bundle.
func (w *watcher) resume(ctx context.Context) error {
	entries, err := List(ctx, w.prefixURL)
	if err != nil {
		return fmt.Errorf("list the chains under %s: %w", w.prefixURL, err)
	}
	// Continue the chain id whose full bundle is newest, from the furthest revision its
	// deltas reach. A full bundle taken after that point (the watcher stopped between
	// storing it and the delta that links it) is linked by the next delta, which ends
	// exactly at its revision.
	chains, _ := Chains(entries)
	var id string
	var lastFull time.Time
	for _, c := range chains {
		src := c.Full.Manifest.Source
		if c.ID == "" || src.Datastore != w.o.Source.Datastore || src.VClusterName != w.o.Source.VClusterName ||
			src.VClusterNamespace != w.o.Source.VClusterNamespace {
			continue
		}
		if c.Full.Manifest.Created.After(lastFull) {
			id, lastFull = c.ID, c.Full.Manifest.Created
		}
	}
	if id == "" {
		slog.Info("no chain to continue under the prefix; starting one with a full bundle", "prefix", w.prefixURL)
		return nil
	}
	var newest, islandChain *Chain
	end, island := int64(-1), int64(-1)
	for _, c := range chains {
		if c.ID != id {
			continue
		}
		if c.FromRevision > island {
			island, islandChain = c.FromRevision, c
		}
		if len(c.Deltas) > 0 && c.ToRevision > end {
			end, newest = c.ToRevision, c
		}
	}
	if newest == nil { // only full bundles so far: go on from the newest
		end, newest = island, islandChain
	}
	if newest.Gap != nil {
		slog.Warn("the chain has a gap after the last delta a full bundle reaches; continuing from there (the watch fills it if the datastore still holds those revisions)",
			"chain", newest.ID, "gap", newest.Gap.String())
	}
	from, boundary := end, int64(0)
	switch {
	case island > end:
		boundary = island // the next delta ends at the newest full bundle's revision
	case island < end && len(islandChain.Deltas) == 0:
		// The newest full bundle was stored but deltas went past it before the bridge
		// delta from it was: read again from its revision, so a delta starts there.
		if fc, ok := w.follow.(datastore.FollowChecker); !ok || fc.CheckFollow(ctx, island) == nil {
			from = island
		}
	}
	if r, ok := w.follow.(datastore.Reviser); ok {
		cur, err := r.Revision(ctx)
		if err != nil {
			return err
		}
		if cur < from {
			slog.Warn("the datastore's revision is below the newest chain's last revision (a different or replaced datastore); starting a new chain",
				"chain", newest.ID, "chainRevision", from, "datastoreRevision", cur)
			return nil
		}
	}
	if fc, ok := w.follow.(datastore.FollowChecker); ok {
		if err := fc.CheckFollow(ctx, from); errors.Is(err, datastore.ErrCompacted) {
			slog.Warn("the datastore compacted revisions after the newest chain's last bundle (the watcher was down too long); starting a new chain with a full bundle",
				"chain", newest.ID, "chainRevision", from, "error", err)
			return nil
		} else if err != nil {
			return err
		}
	}
	w.chain, w.lastCut, w.upTo, w.lastFull, w.boundary = id, from, from, lastFull, boundary
	slog.Info("continuing the newest chain", "chain", w.chain, "full", newest.Full.Name, "deltas", len(newest.Deltas),
		"fromRevision", w.lastCut, "linkFullAt", w.boundary)
	return nil
}

// newChain takes a full bundle that starts a new chain.
func (w *watcher) newChain(ctx context.Context) error {
	w.chain = NewChainID()
	m, err := w.takeFull(ctx, w.name(bundle.KindFull), "new chain")
	if err != nil {
		w.chain = ""
		return err
	}
	w.lastFull = m.Created
	w.mu.Lock()
	w.pending, w.bytes, w.upTo = nil, 0, m.Revision
	w.mu.Unlock()
	w.lastCut, w.boundary = m.Revision, 0
	return nil
}

func (w *watcher) takeFull(ctx context.Context, name, reason string) (*bundle.Manifest, error) {
	o := CreateOptions{Source: w.o.Source, Tool: w.o.Tool, Chain: w.chain, Logger: slog.Default()}
	m, err := createOnce(ctx, w.fullSrc, storage.Location{Store: w.store, Name: name}, o, w.wopts)
	if err != nil {
		return nil, fmt.Errorf("full bundle %s: %w", w.store.URL(name), err)
	}
	slog.Info("stored a full bundle", "bundle", w.store.URL(name), "chain", w.chain, "revision", m.Revision, "keys", m.Keys, "reason", reason)
	if w.o.OnBundle != nil {
		w.o.OnBundle(WatchEvent{URL: w.store.URL(name), Manifest: m, Reason: reason})
	}
	return m, nil
}

// name returns a new bundle name, later than every earlier one.
func (w *watcher) name(kind bundle.Kind) string {
	now := time.Now().UTC().Truncate(time.Millisecond)
	if !now.After(w.lastName) {
		now = w.lastName.Add(time.Millisecond)
	}
	w.lastName = now
	return ChainBundleName(w.prefix, kind, now)
}

// deliver is the change stream's sink.
func (w *watcher) deliver(changes []datastore.Change, upTo int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range changes {
		if c.KV.ModRevision <= w.upTo {
			continue // already held or stored (a stream restarted from an older revision)
		}
		w.pending = append(w.pending, c)
		w.bytes += int64(len(c.KV.Key) + len(c.KV.Value))
	}
	w.upTo = max(w.upTo, upTo)
	if !w.heard.IsZero() && time.Since(w.heard) >= w.silentAfter() {
		slog.Info("the datastore's change stream is back", "revision", w.upTo, "silentFor", time.Since(w.heard).Round(time.Second))
	}
	w.heard = time.Now()
	if w.bytes >= w.o.DeltaMaxBytes {
		select {
		case w.full <- struct{}{}:
		default:
		}
	}
	return nil
}

// silentAfter is how long the change stream may say nothing (it reports progress at
// least every DeltaEvery) before the watcher warns that it captures nothing.
func (w *watcher) silentAfter() time.Duration { return max(3*w.o.DeltaEvery, 15*time.Second) }

// checkSilence warns, once per silentAfter, while the change stream says nothing.
func (w *watcher) checkSilence(lastWarn *time.Time) {
	w.mu.Lock()
	quiet, upTo := time.Since(w.heard), w.upTo
	w.mu.Unlock()
	if quiet < w.silentAfter() || time.Since(*lastWarn) < w.silentAfter() {
		return
	}
	*lastWarn = time.Now()
	slog.Warn("no word from the datastore's change stream: nothing is being captured; is the datastore up and reachable?",
		"silentFor", quiet.Round(time.Second), "lastRevision", upTo, "chain", w.chain)
}

// followChain follows the datastore from the chain's last revision, cutting deltas and
// taking full bundles on schedule, until ctx ends or the stream fails.
func (w *watcher) followChain(ctx context.Context, lastWarn *time.Time) error {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ferr := make(chan error, 1)
	w.mu.Lock()
	from := w.upTo
	if w.heard.IsZero() {
		// Only the first time: a stream that fails and reconnects over and over is
		// silent all along, and checkSilence must see that.
		w.heard = time.Now()
	}
	w.mu.Unlock()
	go func() { ferr <- w.follow.Follow(fctx, from, w.o.DeltaEvery, w.deliver) }()
	tick := time.NewTicker(w.o.DeltaEvery)
	defer tick.Stop()
	fullDue := time.NewTimer(time.Until(w.lastFull.Add(w.o.FullEvery)))
	defer fullDue.Stop()
	final := func() {
		// Store what the stream delivered so far: with ctx cancelled, on a context of its own.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer ccancel()
		if err := w.cut(cctx, "stop"); err != nil {
			slog.Error("could not store the last changes", "error", err)
		}
	}
	// A scheduled full bundle is taken beside the deltas, so they keep coming while it
	// is read and stored.
	type fullResult struct {
		m   *bundle.Manifest
		err error
	}
	var fullDone chan fullResult
	waitFull := func() {
		if fullDone != nil {
			<-fullDone
			fullDone = nil
		}
	}
	for {
		select {
		case <-ctx.Done():
			cancel()
			<-ferr
			waitFull()
			final()
			return ctx.Err()
		case err := <-ferr:
			cancel()
			waitFull()
			final()
			return err
		case <-tick.C:
			w.checkSilence(lastWarn)
		case <-w.full:
		case <-fullDue.C:
			fullDone = make(chan fullResult, 1)
			name := w.name(bundle.KindFull)
			w.mu.Lock()
			w.history, w.keepHistory = nil, true
			w.mu.Unlock()
			go func(done chan<- fullResult) {
				m, err := w.takeFull(fctx, name, "every "+w.o.FullEvery.String())
				done <- fullResult{m, err}
			}(fullDone)
		case r := <-fullDone:
			fullDone = nil
			if r.err != nil {
				if ctx.Err() != nil {
					continue
				}
				slog.Error("the scheduled full bundle failed; deltas go on, retrying in a minute", "error", r.err)
				w.stopHistory()
				fullDue.Reset(time.Minute)
				continue
			}
			w.lastFull = r.m.Created
			fullDue.Reset(w.o.FullEvery)
			if err := w.continueFrom(ctx, r.m.Revision); err != nil {
				slog.Error("could not link the full bundle into the chain; the deltas before it still restore every point", "error", err)
			}
		}
		if err := w.cut(ctx, ""); err != nil {
			if ctx.Err() != nil {
				continue
			}
			slog.Error("could not store a delta; keeping its changes and retrying", "error", err)
		}
	}
}

func (w *watcher) stopHistory() {
	w.mu.Lock()
	w.history, w.keepHistory = nil, false
	w.mu.Unlock()
}

// continueFrom makes the chain go on from a full bundle taken at rev: a delta must start
// exactly there. When deltas were cut past rev while the full bundle was being taken, a
// bridge delta holds the changes after rev up to the last cut; otherwise the next delta
// ends at rev.
func (w *watcher) continueFrom(ctx context.Context, rev int64) error {
	defer w.stopHistory()
	if rev > w.lastCut {
		w.boundary = rev
		return nil
	}
	if rev == w.lastCut {
		return nil
	}
	w.mu.Lock()
	var bridge []datastore.Change
	for _, c := range w.history {
		if c.KV.ModRevision > rev {
			bridge = append(bridge, c)
		}
	}
	w.mu.Unlock()
	_, err := w.storeDelta(ctx, rev, w.lastCut, bridge, "bridge from the full bundle")
	return err
}

// cut stores the pending changes as a delta bundle, up to the newest revision the
// stream fully delivered (or exactly up to the revision of a full bundle just taken, so
// the chain continues from it).
func (w *watcher) cut(ctx context.Context, why string) error {
	w.mu.Lock()
	upTo := w.upTo
	if w.boundary > w.lastCut {
		switch {
		case upTo >= w.boundary:
			upTo = w.boundary
		case why != "stop":
			w.mu.Unlock()
			return nil // wait until the stream reaches the full bundle's revision
		}
		// Stopping: store what is held; a restart links the full bundle (see resume).
	}
	if upTo <= w.lastCut {
		w.mu.Unlock()
		return nil
	}
	n := 0
	for n < len(w.pending) && w.pending[n].KV.ModRevision <= upTo {
		n++
	}
	batch := w.pending[:n:n]
	w.mu.Unlock()

	if _, err := w.storeDelta(ctx, w.lastCut, upTo, batch, why); err != nil {
		return err
	}
	w.mu.Lock()
	w.pending = w.pending[n:]
	for _, c := range batch {
		w.bytes -= int64(len(c.KV.Key) + len(c.KV.Value))
	}
	if w.keepHistory {
		w.history = append(w.history, batch...)
	}
	w.mu.Unlock()
	w.lastCut = upTo
	return nil
}

// storeDelta writes the changes (base, rev] as a delta bundle of the chain.
func (w *watcher) storeDelta(ctx context.Context, base, rev int64, batch []datastore.Change, why string) (*bundle.Manifest, error) {
	var buf bytes.Buffer
	bw, err := bundle.NewWriter(&buf, bundle.WriterOptions{Kind: bundle.KindDelta, Tool: w.wopts.Tool,
		Encrypt: w.wopts.Encrypt, Encryption: w.wopts.Encryption})
	if err != nil {
		return nil, err
	}
	if err := bw.WriteMeta(&bundle.Meta{Source: w.o.Source}); err != nil {
		return nil, err
	}
	leases := map[int64]bool{}
	for i := range batch {
		c := &batch[i]
		if c.Delete {
			err = bw.WriteDelete(&bundle.Delete{Key: c.KV.Key, ModRevision: c.KV.ModRevision})
		} else {
			if id := c.KV.Lease; id != 0 && !leases[id] {
				if err := bw.WriteLease(c.Lease); err != nil {
					return nil, err
				}
				leases[id] = true
			}
			err = bw.WritePut(&c.KV)
		}
		if err != nil {
			return nil, err
		}
	}
	m, err := bw.Close(bundle.Manifest{Revision: rev, BaseRevision: base, Source: w.o.Source, Chain: w.chain})
	if err != nil {
		return nil, err
	}
	name := w.name(bundle.KindDelta)
	if err := storeBundle(ctx, w.store, name, &buf, false); err != nil {
		return nil, fmt.Errorf("store delta %s: %w", w.store.URL(name), err)
	}
	slog.Debug("stored a delta", "bundle", w.store.URL(name), "chain", w.chain, "baseRevision", m.BaseRevision,
		"revision", m.Revision, "puts", m.Keys, "deletes", m.Deletes, "why", why)
	if w.o.OnBundle != nil {
		w.o.OnBundle(WatchEvent{URL: w.store.URL(name), Manifest: m, Reason: why})
	}
	return m, nil
}
