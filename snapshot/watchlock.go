package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/vcsnap/vcsnap/storage"
)

// WatchLockName is the object, in a watch prefix's folder, that says which watcher keeps
// the chains there. One watcher per prefix: two would each continue the newest chain and
// write deltas over each other.
const WatchLockName = ".vcsnap-watch.lock"

// DefaultWatchLockTTL is how long a watcher's claim lasts without renewal: a watcher that
// died (SIGKILL, a lost node) is succeeded after at most this long.
// Nothing is lost meanwhile: the successor resumes the chain from its last revision.
const DefaultWatchLockTTL = 30 * time.Second

// watchLock is the lock object's content.
type watchLock struct {
	Owner   string    `json:"owner"` // host/pid/random, unique per watcher run
	Renewed time.Time `json:"renewed"`
	TTL     float64   `json:"ttlSeconds"`
}

func (l watchLock) expired(now time.Time) bool {
	return now.Sub(l.Renewed) > time.Duration(l.TTL*float64(time.Second))
}

// lease holds a prefix for one watcher. Stores have no compare-and-swap, so a claim is
// written, then read back after settle: of watchers claiming at once, the one whose write
// landed last wins and the others see its name and stand back. Renewals check that the
// claim is still this watcher's, so two never write one chain for longer than a renewal.
type lease struct {
	store  storage.Store
	name   string
	owner  string
	ttl    time.Duration
	settle time.Duration
}

func newLease(s storage.Store, folder string, ttl time.Duration) *lease {
	var b [6]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	return &lease{store: s, name: folder + WatchLockName, owner: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:])),
		ttl: ttl, settle: min(2*time.Second, ttl/10)}
}

func (l *lease) read(ctx context.Context) (*watchLock, error) {
	rc, err := l.store.Get(ctx, l.name)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return nil, err
	}
	var wl watchLock
	if err := json.Unmarshal(b, &wl); err != nil {
		return nil, nil // not ours to honour: a damaged lock is taken over
	}
	return &wl, nil
}

func (l *lease) write(ctx context.Context) error {
	b, _ := json.Marshal(watchLock{Owner: l.owner, Renewed: time.Now().UTC(), TTL: l.ttl.Seconds()})
	return l.store.Put(ctx, l.name, bytes.NewReader(b))
}

// acquire waits until the prefix is free (no claim, or one not renewed within its TTL),
// then claims it. It says every TTL what it waits for.
func (l *lease) acquire(ctx context.Context) error {
	var lastSaid time.Time
	for {
		cur, err := l.read(ctx)
		if err != nil {
			return fmt.Errorf("read the watch lock %s: %w", l.store.URL(l.name), err)
		}
		if cur == nil || cur.Owner == l.owner || cur.expired(time.Now()) {
			if err := l.write(ctx); err != nil {
				return fmt.Errorf("claim the watch lock %s: %w", l.store.URL(l.name), err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(l.settle):
			}
			if again, err := l.read(ctx); err == nil && again != nil && again.Owner == l.owner {
				if cur != nil && cur.Owner != l.owner {
					slog.Warn("took over the prefix from a watcher that stopped renewing its claim", "previous", cur.Owner,
						"renewed", cur.Renewed.Format(time.RFC3339))
				}
				return nil
			}
		} else if time.Since(lastSaid) >= l.ttl {
			lastSaid = time.Now()
			slog.Warn("another watcher keeps the chains under this prefix; waiting until it stops renewing its claim",
				"owner", cur.Owner, "renewed", cur.Renewed.Format(time.RFC3339), "lock", l.store.URL(l.name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(l.ttl / 6):
		}
	}
}

// ErrLockLost means another watcher took the prefix over (this one failed to renew in
// time, or two claimed it at once): this watcher stops so that one chain has one writer.
var ErrLockLost = errors.New("another watcher took over the prefix")

// renew refreshes the claim, or reports ErrLockLost when it is no longer this watcher's.
func (l *lease) renew(ctx context.Context) error {
	cur, err := l.read(ctx)
	if err != nil {
		return err // the store is down: the claim lapses only if this lasts a TTL
	}
	if cur != nil && cur.Owner != l.owner {
		return fmt.Errorf("%w: %s now holds %s", ErrLockLost, cur.Owner, l.store.URL(l.name))
	}
	return l.write(ctx)
}

// release removes the claim if it is still this watcher's.
func (l *lease) release(ctx context.Context) {
	if cur, err := l.read(ctx); err == nil && cur != nil && cur.Owner == l.owner {
		if err := l.store.Delete(ctx, l.name); err != nil {
			slog.Warn("could not remove the watch lock; the next watcher takes it over once it expires", "error", err)
		}
	}
}
